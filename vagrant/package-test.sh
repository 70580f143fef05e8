#!/bin/bash
# The Debian package of `cargo xtask dist` under systemd, in the guest of `cargo xtask vm
# --package` (systemd is PID 1 there; this runs as its job). Each step is checked through what an
# operator sees: dpkg, systemctl, the xlb CLI (through the agent's API), `ip link` (the XDP
# program on the interface), bpffs and the file system.
#
#   package-test.sh XLB.deb
#
# Prints `xlb-vm: package: ok: ...` or `... FAILED: ...` per check, then a summary in libtest's
# words (which `cargo xtask vm` counts); exits non-zero when a check failed.
set -u
deb=$1
pass=0
fail=0
failed=""
say() { echo "xlb-vm: package: $*"; }
ok() {
    pass=$((pass + 1))
    say "ok: $1"
}
bad() {
    fail=$((fail + 1))
    failed="$failed; $1"
    say "FAILED: $1"
    # The unit's state and log once, at the first failure.
    if [ "$fail" = 1 ]; then
        systemctl --no-pager status xlb 2>&1 | tail -n 15
        journalctl -u xlb --no-pager -o short-monotonic 2>&1 | tail -n 40
    fi
}
# check DESCRIPTION COMMAND...: the command's status is the check.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
# wait_for SECONDS COMMAND...: polls the command until it succeeds, for SECONDS at most.
wait_for() {
    local end=$(($(date +%s) + $1))
    shift
    while [ "$(date +%s)" -le "$end" ]; do
        "$@" 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}
# No step may hang the run: systemctl and apt are bounded.
systemctl() { timeout 60 /bin/systemctl "$@"; }
# xdp_on IFACE: the balancer's XDP program is attached to IFACE.
xdp_on() { ip -d link show dev "$1" | grep -q "prog/xdp id [0-9]* name xlb_lb"; }
no_xdp_on() { ! ip -d link show dev "$1" | grep -q "prog/xdp"; }
main_pid() { systemctl show -p MainPID --value xlb; }
active() { [ "$(systemctl show -p ActiveState --value xlb)" = active ]; }
listed() { xlb targets list 2>&1 | grep -q "$1"; }
status_says() { systemctl show -p StatusText --value xlb | grep -q "$1"; }
not_() { ! "$@"; }
quiet() { "$@" >/dev/null; }
journal_has() { journalctl -u xlb --no-pager -o cat 2>/dev/null | grep -q "$1"; }

check "systemd is PID 1" test "$(cat /proc/1/comm)" = systemd

# The interface the agent attaches to: a veth pair (the guest has no NIC).
iface=xlbpkg0
ip link add "$iface" type veth peer name xlbpkg1 && ip link set "$iface" up && ip link set xlbpkg1 up

# --- install
check "dpkg -i $(basename "$deb")" quiet dpkg -i "$deb"
check "the unit is installed" quiet systemctl cat xlb.service
check "installed, not started" test "$(systemctl show -p ActiveState --value xlb)" = inactive
check "not enabled" test "$(systemctl is-enabled xlb 2>&1)" = disabled
conffile() { dpkg-query -W -f='${Conffiles}' xlb | grep -q ' /etc/xlb/xlb.toml '; }
check "/etc/xlb/xlb.toml is a conffile" conffile
check "the shipped config passes xlb check" quiet xlb check
check "man pages: xlb(1), xlb-run(1)" test -f /usr/share/man/man1/xlb.1.gz -a -f /usr/share/man/man1/xlb-run.1.gz
check "completions: bash, zsh, fish" test -s /usr/share/bash-completion/completions/xlb \
    -a -s /usr/share/zsh/vendor-completions/_xlb -a -s /usr/share/fish/vendor_completions.d/xlb.fish
check "bash completes xlb's commands" bash -c '. /usr/share/bash-completion/completions/xlb &&
    COMP_WORDS=(xlb rel) COMP_CWORD=1 COMP_LINE="xlb rel" COMP_POINT=7 && _xlb xlb rel xlb &&
    [[ " ${COMPREPLY[*]} " == *" reload "* ]]'

# --- start: a config of one TCP listener with two targets
config() {
    cat >/etc/xlb/xlb.toml <<EOF
[node]
interface = "$iface"
flow_table_size = 4096
max_listeners = 4
max_targets = 64
metrics_address = "127.0.0.1:9100"

[[target_groups]]
name = "web"
protocol = "TCP"
port = 80
targets = [$1]

[[listeners]]
address = "198.18.100.1"
port = 80
protocol = "TCP"
default_action = { type = "forward", target_group = "${2:-web}" }
EOF
}
config '{ id = "198.18.1.11" }, { id = "198.18.1.12" }'
t=$(date +%s)
check "systemctl start xlb" systemctl start xlb
say "start took $(($(date +%s) - t)) s"
check "active (running) once started: READY=1 came" active
# Type=notify: the start returned after READY=1, so the API answers at once.
check "xlb status answers right after the start" quiet xlb status
check "xlb targets list: the first target" listed 198.18.1.11
check "xlb targets list: the second target" listed 198.18.1.12
check "the XDP program xlb_lb is attached to $iface" xdp_on "$iface"
check "the datapath is pinned under /sys/fs/bpf/xlb" test -e /sys/fs/bpf/xlb/link -a -d /sys/fs/bpf/xlb/maps
check "the API socket is in /run/xlb" test -S /run/xlb/xlb.sock
metrics() { curl -sf http://127.0.0.1:9100/metrics | grep -q xlb_healthy_host_count; }
check "metrics on 127.0.0.1:9100" metrics
check "xlb targets register" xlb targets register --target-group web --id 198.18.1.14
check "the registration is in /var/lib/xlb (the sandbox lets the agent write there)" \
    grep -q 198.18.1.14 /var/lib/xlb/state.json

# --- reload
pid=$(main_pid)
config '{ id = "198.18.1.11" }, { id = "198.18.1.12" }, { id = "198.18.1.13" }'
check "systemctl reload xlb" systemctl reload xlb
check "the new target is listed after the reload" listed 198.18.1.13
check "same process after the reload" test "$(main_pid)" = "$pid"
check "the unit's status says reloaded" status_says "^reloaded"
config '{ id = "198.18.1.11" }' nosuchgroup
check "a refused config fails systemctl reload" not_ systemctl reload xlb
check "... the agent runs on" active
check "... with its running config" listed 198.18.1.13
check "... and the unit's status says so" status_says "reload refused"
config '{ id = "198.18.1.11" }, { id = "198.18.1.12" }, { id = "198.18.1.13" }'

# --- Restart=on-failure
pid=$(main_pid)
systemctl kill -s KILL xlb
restarted() { [ "$(main_pid)" != "$pid" ] && [ "$(main_pid)" != 0 ] && active; }
check "killed, it is restarted (Restart=on-failure)" wait_for 30 restarted
check "the restarted agent serves the config" listed 198.18.1.13
check "and re-opened the pinned datapath" xdp_on "$iface"

# --- stop: the datapath stays pinned and attached (docs/operations.md)
check "systemctl stop xlb" systemctl stop xlb
check "inactive, not failed, after the stop" test "$(systemctl show -p ActiveState --value xlb)" = inactive
check "after the stop, xlb_lb is still attached to $iface" xdp_on "$iface"
check "after the stop, the pins stay" test -e /sys/fs/bpf/xlb/link
check "the agent said so" journal_has "the datapath stays attached"
check "/run/xlb is gone with the service" test ! -e /run/xlb

# --- remove while it runs, then purge
check "started again" systemctl start xlb
check "apt-get remove xlb" quiet env DEBIAN_FRONTEND=noninteractive timeout 120 apt-get remove -y -q xlb
check "removed: the agent is stopped" not_ pgrep -x xlb
check "removed: the unit file and the binary are gone" test ! -e /usr/lib/systemd/system/xlb.service -a ! -e /usr/bin/xlb
check "removed: the datapath is detached from $iface" no_xdp_on "$iface"
check "removed: the pins are gone" test ! -e /sys/fs/bpf/xlb
check "removed: the conffile stays" test -f /etc/xlb/xlb.toml
check "removed: dpkg keeps its config files" test "$(dpkg-query -W -f='${Status}' xlb)" = "deinstall ok config-files"
check "apt-get purge xlb" quiet env DEBIAN_FRONTEND=noninteractive timeout 120 apt-get purge -y -q xlb
check "purged: the conffile is gone" test ! -e /etc/xlb/xlb.toml
check "purged: /var/lib/xlb is gone" test ! -e /var/lib/xlb
check "purged: dpkg knows no xlb" not_ dpkg-query -W xlb
systemctl daemon-reload
check "purged: systemd knows no xlb.service" not_ systemctl cat xlb.service

result=ok
[ "$fail" = 0 ] || result=FAILED
echo "test result: $result. $pass passed; $fail failed; 0 ignored; 0 measured; 0 filtered out"
[ "$fail" = 0 ] || say "failed:${failed#;}"
[ "$fail" = 0 ]
