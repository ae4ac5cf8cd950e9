//! `tartan-crds print` writes every CRD to stdout; `tartan-crds write DIR`
//! (re)writes `DIR/<plural>.tartan.dev.yaml`.

use std::path::PathBuf;
use std::process::ExitCode;

use tartan_crds::generate::{crds, render};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["print"] => print(),
        ["write", dir] => write(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: tartan-crds print | tartan-crds write <dir>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tartan-crds: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print() -> Result<(), Box<dyn std::error::Error>> {
    for file in crds() {
        print!("---\n{}", render(&file.crd)?);
    }
    Ok(())
}

fn write(dir: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    for file in crds() {
        let path = dir.join(file.file_name);
        std::fs::write(&path, render(&file.crd)?)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
