//! wick-nn's build script: with the `cuda` feature, compiles `src/ops/cuda/kernels.cu` to PTX
//! (`$OUT_DIR/wick_nn_kernels.ptx`, embedded by `ops/cuda/mod.rs`) with nvcc: `$NVCC`, else
//! `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH, for `compute_$CUDA_COMPUTE_CAP` (digits
//! only; default 80, which every GPU from Ampere on can JIT). `-fmad=false` keeps the kernels'
//! float arithmetic the CPU reference's (no fused multiply-adds). Without `cuda` it does
//! nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let source = "src/ops/cuda/kernels.cu";
    println!("cargo::rerun-if-changed={source}");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP", "NVCC_CCBIN"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let nvcc = std::env::var_os("NVCC").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CUDA_HOME")
            .map(|home| PathBuf::from(home).join("bin/nvcc"))
            .filter(|path| path.exists())
            .unwrap_or_else(|| PathBuf::from("nvcc"))
    });
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "80".to_string())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let cap = if cap.is_empty() { "80".to_string() } else { cap };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("wick_nn_kernels.ptx");
    let mut command = Command::new(&nvcc);
    command
        .args(["--ptx", "-O3", "-std=c++17", "-fmad=false"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg(source);
    if let Some(ccbin) = std::env::var_os("NVCC_CCBIN") {
        command.arg("-ccbin").arg(ccbin);
    }
    let output = command.output().unwrap_or_else(|error| {
        panic!(
            "wick-nn (feature cuda): cannot run {} ({error}); install a CUDA toolkit or run \
             `cargo xtask cuda-setup` and source its env.sh (docs/cuda.md)",
            nvcc.display()
        )
    });
    if !output.status.success() {
        panic!(
            "wick-nn (feature cuda): nvcc failed on {source}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
