//! Resolve a kernel spec and build an initramfs; prints both paths.
//!
//! cargo run -p images --example mkinitramfs -- debian:7.2 AGENT [MODULE...]

use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: mkinitramfs SPEC AGENT [MODULE...]");
        std::process::exit(2);
    }
    let cache = images::Cache::default_location();
    let spec: images::KernelSpec = match args[0].parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut progress = |p: images::Progress| match p {
        images::Progress::Downloading { done, total, .. } if done != 0 && done != total => {}
        p => eprintln!("{p:?}"),
    };
    let t = Instant::now();
    let kernel = images::resolve_kernel(&cache, &spec, &mut progress).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    eprintln!("kernel resolved in {:?}", t.elapsed());
    let modules: Vec<&str> = args[2..].iter().map(String::as_str).collect();
    let t = Instant::now();
    let initrd = images::build_initramfs(
        &cache,
        &images::InitramfsSpec {
            kernel: &kernel,
            modules: &modules,
            optional: &[],
            agent: Path::new(&args[1]),
            busybox: Path::new("/bin/busybox"),
            files: &[],
        },
        &mut progress,
    )
    .unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    eprintln!("initramfs built in {:?}", t.elapsed());
    println!("{}", kernel.bzimage.display());
    println!("{}", initrd.display());
}
