//! `cargo xtask cuda-setup`, `cuda-check` and `gpu-pack`: wick's CUDA features built on a
//! machine with no GPU and no CUDA toolkit (docs/cuda.md; the recipe is
//! ../shared/reference/cuda-build.md).
//!
//! - `cuda-setup` installs the pinned CUDA 13.0 wheels from PyPI into a virtual environment
//!   outside the repository (default `~/.cache/wick/cuda-venv`), assembles the `cuda-home`
//!   tree candle's and cudarc's build scripts expect, builds link stubs for `libcuda.so.1`
//!   (the driver, which no wheel ships) and `libnccl.so.2`, and writes `env.sh`.
//! - `cuda-check` runs `cargo clippy` (or `check`) of the workspace with the CUDA features in
//!   that environment, in its own target directory, through `scripts/nvcc-check.sh`: wick's
//!   kernels go through the real nvcc, candle-kernels' upstream sources get empty outputs
//!   (nothing is linked or loaded by a check).
//! - `gpu-pack` builds the release `wick` with `cuda,cudnn,nccl` (the real nvcc), compresses
//!   it, re-encodes an Imagenette pack, and checks that what the GPU machine is sent fits its
//!   64 MiB: the payload of `scripts/gpu-check.sh`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The compiler: enough for `cargo check`. nvvm and crt are pinned because nvcc's metadata
/// leaves them open and 13.5's PTX ISA is newer than the H200's 13.0 driver accepts; cccl is
/// needed by candle-kernels' `reduce.cu`; the runtime wheel brings `cuda_runtime.h`.
const COMPILER_WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-runtime==13.0.96",
];
/// The libraries a linked binary needs (cuBLAS, cuRAND, NVRTC; cuDNN installed apart).
const LIBRARY_WHEELS: [&str; 3] =
    ["nvidia-cublas==13.0.2.14", "nvidia-curand==10.4.0.35", "nvidia-cuda-nvrtc==13.0.88"];
/// Installed with `--no-deps` (its dependencies are the wheels above).
const CUDNN_WHEEL: &str = "nvidia-cudnn-cu13==9.21.1.3";
/// Versioned libraries of the wheels and the unversioned names the linker looks for.
const LINK_NAMES: [&str; 6] = [
    "libcudart.so.13",
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcurand.so.10",
    "libnvrtc.so.13",
    "libcudnn.so.9",
];
/// H100/H200. cudaforge turns it into sm_90a / compute_90a for candle's kernels.
const COMPUTE_CAP: &str = "90";
/// What the GPU machine accepts per call: the working tree plus carried paths.
const CARRY_LIMIT: u64 = 64 * 1024 * 1024;

/// The CUDA tasks (main.rs flattens them into its own list).
#[derive(clap::Subcommand)]
pub(crate) enum CudaTask {
    /// Install a CUDA 13.0 toolchain from PyPI (no GPU or system CUDA needed) for building
    /// wick's `cuda`, `cudnn` and `nccl` features; writes <venv>/env.sh.
    CudaSetup {
        /// The venv to create (default $WICK_CUDA_VENV, else ~/.cache/wick/cuda-venv).
        #[arg(long)]
        venv: Option<PathBuf>,
        /// Only the compiler (~105 MB of wheels): enough for cuda-check, not for a binary.
        #[arg(long)]
        compiler_only: bool,
    },
    /// `cargo clippy --workspace --all-targets` with the CUDA features (what CI runs).
    CudaCheck {
        #[arg(long)]
        venv: Option<PathBuf>,
        /// Features of wick-cli to enable.
        #[arg(long, default_value = "cuda,cudnn,nccl")]
        features: String,
        /// `cargo check` instead of clippy with -D warnings.
        #[arg(long)]
        check_only: bool,
        /// Compile candle-kernels' own CUDA sources too (PTX and the MoE/GGUF library: ~15
        /// CPU-minutes more when cold); by default they get empty outputs.
        #[arg(long)]
        full_nvcc: bool,
    },
    /// `cargo build --release -p wick-cli` with the CUDA features and the real nvcc (what CI
    /// runs), then a load check of the binary with no GPU: it starts, trains a step on the
    /// CPU, and `--device cuda:0` fails with an error that names the device.
    CudaBuild {
        #[arg(long)]
        venv: Option<PathBuf>,
        /// Features of wick-cli to enable.
        #[arg(long, default_value = "cuda,cudnn,nccl")]
        features: String,
    },
    /// Build the payload of scripts/gpu-check.sh into target/gpu-pack: the CUDA wick binary
    /// (cuda, cudnn, nccl; stripped, xz) and an Imagenette pack re-encoded to --size px.
    GpuPack {
        #[arg(long)]
        venv: Option<PathBuf>,
        /// Imagenette with train/ and val/.
        #[arg(long, default_value = "../shared/data/imagenette2-224")]
        data: PathBuf,
        #[arg(long, default_value_t = 128)]
        size: u32,
        /// JPEG quality: 65 keeps the 128 px pack (~44 MiB) inside the budget beside the
        /// binary and the working tree.
        #[arg(long, default_value_t = 65)]
        quality: u8,
        /// Python with Pillow (default: as `cargo xtask bench` finds one).
        #[arg(long)]
        python: Option<PathBuf>,
    },
}

/// Runs one of the CUDA tasks.
pub(crate) fn run_task(root: &Path, task: CudaTask) -> anyhow::Result<()> {
    match task {
        CudaTask::CudaSetup { venv, compiler_only } => {
            let venv = venv.unwrap_or_else(default_venv);
            let env = setup(root, &SetupOptions { venv, compiler_only })?;
            println!("CUDA toolchain ready in {}; for a shell:", env.venv.display());
            println!("  source {}", env.venv.join("env.sh").display());
            print!("{}", env.env_script());
            Ok(())
        }
        CudaTask::CudaCheck { venv, features, check_only, full_nvcc } => {
            let venv = venv.unwrap_or_else(default_venv);
            check(root, &CheckOptions { venv, features, check_only, full_nvcc })
        }
        CudaTask::CudaBuild { venv, features } => {
            let env = CudaEnv::load(&venv.unwrap_or_else(default_venv))?;
            let binary = build_binary(root, &env, &features)?;
            load_check(root, &env, &binary)?;
            println!("cuda-build: {} links and loads", binary.display());
            Ok(())
        }
        CudaTask::GpuPack { venv, data, size, quality, python } => {
            let venv = venv.unwrap_or_else(default_venv);
            let python = python
                .or_else(|| crate::bench::find_python(root))
                .unwrap_or_else(|| PathBuf::from("python3"));
            let data = if data.is_absolute() { data } else { root.join(data) };
            gpu_pack(root, &PackOptions { venv, data, size, quality, python })
        }
    }
}

/// A set-up CUDA environment.
pub(crate) struct CudaEnv {
    pub(crate) venv: PathBuf,
    pub(crate) cuda_home: PathBuf,
}

/// `$WICK_CUDA_VENV`, else `~/.cache/wick/cuda-venv`.
pub(crate) fn default_venv() -> PathBuf {
    if let Some(venv) = std::env::var_os("WICK_CUDA_VENV") {
        return PathBuf::from(venv);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/wick/cuda-venv")
}

impl CudaEnv {
    /// The environment `cuda-setup` made in `venv`.
    pub(crate) fn load(venv: &Path) -> anyhow::Result<Self> {
        let cuda_home = venv.join("cuda-home");
        if !cuda_home.join("bin/nvcc").exists() {
            bail!(
                "no CUDA toolchain in {}: run `cargo xtask cuda-setup` first (docs/cuda.md)",
                venv.display()
            );
        }
        Ok(Self { venv: venv.to_path_buf(), cuda_home })
    }

    /// Whether the link-time libraries are there (`cuda-setup` without `--compiler-only`).
    pub(crate) fn has_libraries(&self) -> bool {
        ["libcublas.so", "libcurand.so", "libcudnn.so"]
            .iter()
            .all(|name| self.cuda_home.join("lib64").join(name).exists())
    }

    /// The build environment: CUDA_HOME, nvcc first on PATH, the compute capability (unless
    /// set) and the CUDA version cudarc would otherwise ask nvcc for.
    pub(crate) fn vars(&self) -> Vec<(&'static str, OsString)> {
        let mut path = OsString::from(self.cuda_home.join("bin"));
        if let Some(old) = std::env::var_os("PATH") {
            path.push(":");
            path.push(old);
        }
        let cap = std::env::var_os("CUDA_COMPUTE_CAP").unwrap_or_else(|| COMPUTE_CAP.into());
        vec![
            ("CUDA_HOME", self.cuda_home.clone().into_os_string()),
            ("PATH", path),
            ("CUDA_COMPUTE_CAP", cap),
            ("CUDARC_CUDA_VERSION", "13000".into()),
        ]
    }

    pub(crate) fn apply(&self, command: &mut Command) {
        for (key, value) in self.vars() {
            command.env(key, value);
        }
    }

    fn env_script(&self) -> String {
        let mut script = String::from(
            "# Written by `cargo xtask cuda-setup`: the environment for building wick's CUDA features.\n",
        );
        script.push_str(&format!("export CUDA_HOME={}\n", self.cuda_home.display()));
        script.push_str("export PATH=\"$CUDA_HOME/bin:$PATH\"\n");
        script.push_str(&format!("export CUDA_COMPUTE_CAP=${{CUDA_COMPUTE_CAP:-{COMPUTE_CAP}}}\n"));
        script.push_str("export CUDARC_CUDA_VERSION=13000\n");
        script
    }
}

/// What `cuda-setup` installs.
pub(crate) struct SetupOptions {
    pub(crate) venv: PathBuf,
    /// Only the compiler (enough for `cuda-check`), not the link-time libraries.
    pub(crate) compiler_only: bool,
}

/// `cargo xtask cuda-setup`.
pub(crate) fn setup(root: &Path, options: &SetupOptions) -> anyhow::Result<CudaEnv> {
    let venv = &options.venv;
    if venv.starts_with(root) {
        bail!("the CUDA venv must live outside the repository (got {})", venv.display());
    }
    if !venv.join("bin/pip").exists() {
        std::fs::create_dir_all(venv.parent().unwrap_or(Path::new(".")))?;
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))
            .context("creating the venv (needs python3 with the venv module)")?;
    }
    let stamp_path = venv.join("wick-wheels.txt");
    let installed = std::fs::read_to_string(&stamp_path).unwrap_or_default();
    let installed: Vec<&str> = installed.lines().collect();
    let mut wanted: Vec<&str> = COMPILER_WHEELS.to_vec();
    if !options.compiler_only {
        wanted.extend(LIBRARY_WHEELS);
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|w| !installed.contains(w)).collect();
    let pip = venv.join("bin/pip");
    if !missing.is_empty() {
        run(Command::new(&pip).args(["install", "--quiet", "--no-cache-dir"]).args(&missing))?;
    }
    let want_cudnn = !options.compiler_only && !installed.contains(&CUDNN_WHEEL);
    if want_cudnn {
        run(Command::new(&pip).args([
            "install",
            "--quiet",
            "--no-cache-dir",
            "--no-deps",
            CUDNN_WHEEL,
        ]))?;
    }
    let mut stamp: Vec<&str> = installed.clone();
    stamp.extend(missing.iter().copied());
    if want_cudnn {
        stamp.push(CUDNN_WHEEL);
    }
    stamp.sort_unstable();
    stamp.dedup();
    std::fs::write(&stamp_path, stamp.join("\n") + "\n")?;

    let nvidia = site_packages(venv)?.join("nvidia");
    let cuda_home = venv.join("cuda-home");
    build_cuda_home(&nvidia, &cuda_home)?;
    let cudarc = cudarc_source(root)?;
    build_stub(
        &cudarc.join("src/driver/sys/mod.rs"),
        "cu",
        "libcuda.so.1",
        &cuda_home.join("lib64/stubs/libcuda.so"),
    )?;
    build_stub(
        &cudarc.join("src/nccl/sys/mod.rs"),
        "nccl",
        "libnccl.so.2",
        &cuda_home.join("lib64/stubs/libnccl.so"),
    )?;
    let env = CudaEnv::load(venv)?;
    std::fs::write(venv.join("env.sh"), env.env_script())?;
    Ok(env)
}

/// `lib/python3.*/site-packages` of a venv.
fn site_packages(venv: &Path) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(venv.join("lib"))? {
        let path = entry?.path().join("site-packages");
        if path.join("nvidia").is_dir() {
            return Ok(path);
        }
    }
    bail!("no site-packages/nvidia under {}/lib: did pip fail?", venv.display())
}

/// A symlink `link -> target`, replacing whatever was at `link`.
fn symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("replacing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// The `CUDA_HOME` layout (bin, include, nvvm, lib64) over the wheels' one `cu13` tree.
fn build_cuda_home(nvidia: &Path, home: &Path) -> anyhow::Result<()> {
    let cu13 = nvidia.join("cu13");
    std::fs::create_dir_all(home.join("lib64/stubs"))?;
    for dir in ["bin", "include", "nvvm"] {
        symlink(&cu13.join(dir), &home.join(dir))?;
    }
    let lib64 = home.join("lib64");
    for entry in std::fs::read_dir(cu13.join("lib"))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.contains(".so.") || name.ends_with(".a") {
            symlink(&path, &lib64.join(&name))?;
        }
    }
    let cudnn = nvidia.join("cudnn/lib/libcudnn.so.9");
    if cudnn.exists() {
        symlink(&cudnn, &lib64.join("libcudnn.so.9"))?;
    }
    for versioned in LINK_NAMES {
        if lib64.join(versioned).exists() {
            let base = versioned.split(".so.").next().unwrap_or(versioned);
            symlink(Path::new(versioned), &lib64.join(format!("{base}.so")))?;
        }
    }
    Ok(())
}

/// The cudarc sources cargo downloaded for the version in Cargo.lock (fetched if missing).
fn cudarc_source(root: &Path) -> anyhow::Result<PathBuf> {
    let lock: toml::Table = std::fs::read_to_string(root.join("Cargo.lock"))?.parse()?;
    let version = lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("cudarc"))
        .and_then(|p| p.get("version").and_then(|v| v.as_str()))
        .context("Cargo.lock has no cudarc (is the cuda feature declared?)")?
        .to_string();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(cargo_home.join("registry/src"))
            .ok()?
            .flatten()
            .map(|registry| registry.path().join(format!("cudarc-{version}")))
            .find(|dir| dir.join("src/driver/sys/mod.rs").exists())
    };
    if let Some(dir) = find() {
        return Ok(dir);
    }
    run(Command::new(cargo()).current_dir(root).args(["fetch", "--quiet"]))?;
    find().with_context(|| format!("cudarc-{version} is not in {}", cargo_home.display()))
}

/// A shared library with soname `soname` exporting one function per `pub unsafe fn
/// <prefix>...(` line of a cudarc sys module (each returns 999, an error code). It lets a
/// binary link where the real library is absent; at run time the real one is loaded.
fn build_stub(sys: &Path, prefix: &str, soname: &str, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(sys).with_context(|| format!("reading {}", sys.display()))?;
    let marker = format!("pub unsafe fn {prefix}");
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("pub unsafe fn "))
        .filter(|rest| rest.starts_with(prefix))
        .filter_map(|rest| rest.split('(').next())
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        bail!("no `{marker}` functions in {}", sys.display());
    }
    let source: String =
        names.iter().map(|name| format!("int {name}(void) {{ return 999; }}\n")).collect();
    let c_file = out.with_extension("c");
    std::fs::write(&c_file, source)?;
    run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(out)
        .arg(format!("-Wl,-soname,{soname}"))
        .arg(&c_file))
    .context("building a link stub (needs gcc)")?;
    Ok(())
}

/// What `cuda-check` runs.
pub(crate) struct CheckOptions {
    pub(crate) venv: PathBuf,
    /// wick-cli features, e.g. `cuda,cudnn,nccl`.
    pub(crate) features: String,
    /// `cargo check` instead of `cargo clippy -- -D warnings`.
    pub(crate) check_only: bool,
    /// Compile candle-kernels' sources too (the real nvcc for everything).
    pub(crate) full_nvcc: bool,
}

/// `cargo xtask cuda-check`.
pub(crate) fn check(root: &Path, options: &CheckOptions) -> anyhow::Result<()> {
    let env = CudaEnv::load(&options.venv)?;
    let features = wick_cli_features(&options.features);
    let mut command = Command::new(cargo());
    command.current_dir(root);
    if options.check_only {
        command.args(["check", "--workspace", "--all-targets", "--features", &features]);
    } else {
        command.args(["clippy", "--workspace", "--all-targets", "--features", &features]);
        command.args(["--", "-D", "warnings"]);
    }
    env.apply(&mut command);
    // Its own target directory: the shim's empty candle-kernels outputs must never reach a
    // link or a run, and cudaforge's object cache would keep them across an NVCC change.
    let dir = if options.full_nvcc { "cuda" } else { "cuda-check" };
    command.env("CARGO_TARGET_DIR", target_dir(root).join(dir));
    if !options.full_nvcc {
        command.env("NVCC", root.join("scripts/nvcc-check.sh"));
        command.env("WICK_REAL_NVCC", env.cuda_home.join("bin/nvcc"));
    }
    let started = std::time::Instant::now();
    let status = run_status(&mut command)?;
    eprintln!("cuda-check: {:.0} s", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("the CUDA build check failed");
    }
    Ok(())
}

/// `cuda,cudnn` → `wick-cli/cuda,wick-cli/cudnn` (features of the binary crate, which enable
/// the library crates' own).
fn wick_cli_features(features: &str) -> String {
    features
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| if f.contains('/') { f.to_string() } else { format!("wick-cli/{f}") })
        .collect::<Vec<_>>()
        .join(",")
}

/// `$CARGO_TARGET_DIR`, else `<root>/target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `cargo build --release -p wick-cli --features <features>` with the real nvcc, in the
/// linking target directory `<target>/cuda`; returns the binary.
fn build_binary(root: &Path, env: &CudaEnv, features: &str) -> anyhow::Result<PathBuf> {
    if !env.has_libraries() {
        bail!(
            "the CUDA venv {} has only the compiler: run `cargo xtask cuda-setup` (without \
             --compiler-only) to get the libraries a binary links",
            env.venv.display()
        );
    }
    let target = target_dir(root).join("cuda");
    let mut build = Command::new(cargo());
    build.current_dir(root).args(["build", "--release", "-p", "wick-cli", "--features"]);
    build.arg(wick_cli_features(features));
    env.apply(&mut build);
    build.env("CARGO_TARGET_DIR", &target);
    let started = std::time::Instant::now();
    if !run_status(&mut build)?.success() {
        bail!("building the CUDA wick binary failed");
    }
    eprintln!("cuda build: {:.0} s", started.elapsed().as_secs_f64());
    Ok(target.join("release/wick"))
}

/// Runs the CUDA build of `wick` on this GPU-less machine: the wheels' libraries and the
/// link stubs (under their sonames, in a scratch folder) on `LD_LIBRARY_PATH`, every symbol
/// bound at load. It must start, train one step on the CPU, and refuse `--device cuda:0`
/// with an error naming the device (the stub driver's cuInit fails), not crash.
fn load_check(root: &Path, env: &CudaEnv, binary: &Path) -> anyhow::Result<()> {
    let scratch = target_dir(root).join("cuda/load-check");
    std::fs::create_dir_all(&scratch)?;
    let stubs = env.cuda_home.join("lib64/stubs");
    symlink(&stubs.join("libcuda.so"), &scratch.join("libcuda.so.1"))?;
    symlink(&stubs.join("libnccl.so"), &scratch.join("libnccl.so.2"))?;
    let mut library_path = OsString::from(&scratch);
    library_path.push(":");
    library_path.push(env.cuda_home.join("lib64"));
    let wick = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut command = Command::new(binary);
        command.args(args).env("LD_LIBRARY_PATH", &library_path);
        eprintln!("$ wick {}", args.join(" "));
        command.output().with_context(|| format!("running {}", binary.display()))
    };
    let text = |output: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };

    let version = wick(&["--version"])?;
    if !version.status.success() {
        bail!("the CUDA wick does not start:\n{}", text(&version));
    }
    let step = wick(&[
        "bench-step",
        "--device",
        "cpu",
        "--arch",
        "xresnet18",
        "--size",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
    ])?;
    if !step.status.success() {
        bail!("the CUDA wick cannot train a step on the CPU:\n{}", text(&step));
    }
    let refused = wick(&["bench-step", "--device", "cuda:0", "--steps", "1", "--warmup", "0"])?;
    let message = text(&refused);
    if refused.status.success()
        || !message.contains("--device cuda:0")
        || message.contains("panicked")
    {
        bail!(
            "with no GPU, `--device cuda:0` should fail with an error naming the device \
             (exit {:?}):\n{message}",
            refused.status.code()
        );
    }
    let first_line = message.lines().next().unwrap_or_default();
    eprintln!("load check: starts, trains on the CPU; without a GPU: {first_line}");
    Ok(())
}

/// What `gpu-pack` makes.
pub(crate) struct PackOptions {
    pub(crate) venv: PathBuf,
    /// Imagenette with train/ and val/ (the shared 224 px copy).
    pub(crate) data: PathBuf,
    /// Side of the re-encoded square images.
    pub(crate) size: u32,
    /// JPEG quality of the re-encoding.
    pub(crate) quality: u8,
    /// Python with Pillow for the re-encoding.
    pub(crate) python: PathBuf,
}

/// The folder under the repository the pack goes to (git-ignored, carried by name).
pub(crate) const PACK_DIR: &str = "target/gpu-pack";

/// `cargo xtask gpu-pack`.
pub(crate) fn gpu_pack(root: &Path, options: &PackOptions) -> anyhow::Result<()> {
    let env = CudaEnv::load(&options.venv)?;
    let out = root.join(PACK_DIR);
    std::fs::create_dir_all(&out)?;

    // 1. The binary.
    let binary = build_binary(root, &env, "cuda,cudnn,nccl")?;
    let staged = out.join("wick");
    std::fs::copy(&binary, &staged)?;
    run(Command::new("strip").arg(&staged)).context("stripping the binary (needs binutils)")?;
    let compressed = out.join("wick.xz");
    let _ = std::fs::remove_file(&compressed);
    run(Command::new("xz").args(["-9", "-T0", "-f"]).arg(&staged))
        .context("compressing (needs xz)")?;

    // 2. The data.
    let pack = out.join(format!("imagenette-{}.tar.gz", options.size));
    let stamp = out.join(format!("imagenette-{}.params", options.size));
    let params = format!("{} q{}\n", options.data.display(), options.quality);
    if !pack.exists() || std::fs::read_to_string(&stamp).ok().as_deref() != Some(params.as_str()) {
        run(Command::new(&options.python)
            .arg(root.join("scripts/make_pack.py"))
            .arg("--src")
            .arg(&options.data)
            .args(["--size", &options.size.to_string(), "--quality", &options.quality.to_string()])
            .arg("--out")
            .arg(&pack))
        .context("re-encoding the Imagenette pack (needs Python with Pillow: --python)")?;
        std::fs::write(&stamp, params)?;
    }
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let keep = name == "wick.xz"
            || name == pack.file_name().unwrap_or_default().to_string_lossy()
            || name == stamp.file_name().unwrap_or_default().to_string_lossy();
        if !keep {
            std::fs::remove_file(&path)?;
        }
    }

    // 3. The budget.
    let tree = working_tree_bytes(root)?;
    let pack_bytes: u64 = [&compressed, &pack]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let total = tree + pack_bytes;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "gpu-pack: wick.xz {:.1} MiB, {} {:.1} MiB, working tree {:.1} MiB: {:.1} of {:.0} MiB",
        mib(std::fs::metadata(&compressed)?.len()),
        pack.file_name().unwrap_or_default().to_string_lossy(),
        mib(std::fs::metadata(&pack)?.len()),
        mib(tree),
        mib(total),
        mib(CARRY_LIMIT)
    );
    if total > CARRY_LIMIT {
        bail!("the payload exceeds the GPU machine's 64 MiB: lower --size or --quality");
    }
    println!(
        "ready: on the GPU machine run `bash scripts/gpu-check.sh` with `{PACK_DIR}` carried \
         (docs/cuda.md, \"Running the GPU check\")"
    );
    Ok(())
}

/// Bytes of what the GPU machine is sent besides the carried pack: tracked files plus
/// untracked files git does not ignore.
fn working_tree_bytes(root: &Path) -> anyhow::Result<u64> {
    let output = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .output()
        .context("running git ls-files")?;
    if !output.status.success() {
        bail!("git ls-files failed");
    }
    Ok(output
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .filter_map(|p| std::fs::metadata(root.join(String::from_utf8_lossy(p).as_ref())).ok())
        .map(|m| m.len())
        .sum())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    if !run_status(command)?.success() {
        bail!("{command:?} failed");
    }
    Ok(())
}

fn run_status(command: &mut Command) -> anyhow::Result<std::process::ExitStatus> {
    eprintln!("$ {command:?}");
    command.status().with_context(|| format!("running {command:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_name_the_binary_crate() {
        assert_eq!(wick_cli_features("cuda, cudnn"), "wick-cli/cuda,wick-cli/cudnn");
        assert_eq!(wick_cli_features("wick-nn/cuda"), "wick-nn/cuda");
    }

    #[test]
    fn the_shim_skips_only_candle_kernels() {
        let shim = std::fs::read_to_string(crate::project_root().join("scripts/nvcc-check.sh"))
            .expect("scripts/nvcc-check.sh");
        assert!(shim.contains("*/candle-kernels-*/*.cu"), "the shim matches candle-kernels only");
        assert!(shim.contains("exec \"$real\""), "everything else runs the real nvcc");
    }
}
