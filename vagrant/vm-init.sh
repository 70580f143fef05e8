#!/bin/sh
# PID 1 of the `cargo xtask vm` guest (installed as /usr/local/sbin/xlb-vm-init; the kernel command
# line has `init=` pointing here). No systemd: it mounts what xlb and the lab need, mounts the payload
# disk (/dev/vdb, built by xtask) at the path given by `xlb.payload=` (the host's target/release, so
# the test binaries find `xlb` and `xlb-lab` where they were built), runs the payload's `job.sh`
# (or a shell on the console when there is none), prints `XLB-VM-RESULT: rc=N` on the console for
# the host to read, and powers off. When systemd boots the guest instead (`cargo xtask vm
# --package`), xlb-vm-job.service runs this script as a service: what systemd mounted stays.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=${TERM:-linux}

# tini reaps the orphans that lab servers leave behind; this script then runs as its child.
if [ "$$" = 1 ] && [ -x /usr/bin/tini ]; then
    exec /usr/bin/tini -s -- "$0" "$@"
fi

mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mounted /dev/shm || mount -t tmpfs tmpfs /dev/shm
mounted /run || mount -t tmpfs -o mode=755 tmpfs /run
mounted /tmp || mount -t tmpfs tmpfs /tmp
mounted /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mounted /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -o remount,rw / 2>/dev/null
hostname xlb-vm
ip link set lo up
echo 1 >/proc/sys/kernel/sysrq
# lab servers and the agent may open many sockets
ulimit -n 65536 2>/dev/null

payload=$(sed -n 's/.*xlb\.payload=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "xlb-vm: init: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"

rc=0
if [ -n "$payload" ] && [ -b /dev/vdb ]; then
    mkdir -p "$payload"
    if ! mount /dev/vdb "$payload"; then
        echo "xlb-vm: cannot mount the payload disk at $payload"
        rc=125
    fi
fi
if [ "$rc" = 0 ] && [ -n "$payload" ] && [ -x "$payload/job.sh" ]; then
    cd "$payload" || rc=125
    [ "$rc" = 0 ] && { "$payload/job.sh"; rc=$?; }
else
    echo "xlb-vm: no job: shell on the console (exit it to power off)"
    setsid -c /bin/bash -l </dev/ttyS0 >/dev/ttyS0 2>&1
    rc=$?
fi
cd /
sync
[ -n "$payload" ] && umount "$payload" 2>/dev/null
echo "XLB-VM-RESULT: rc=$rc"
sleep 1
echo o >/proc/sysrq-trigger
sleep 30
