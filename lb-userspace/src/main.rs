fn main() -> anyhow::Result<()> {
    let mut dp = xlb::dataplane::Dataplane::load(xlb::dataplane::Sizes::DEFAULT)?;
    let (a, out) = dp.test_run(xlb::dataplane::Program::Lb, &[0u8; 64])?;
    println!("{a} {}", out.len());
    Ok(())
}
