//! How a backend runs the networks: kernel choices that change speed, not results beyond their
//! stated tolerances.
//!
//! They are a value ([`RuntimeOptions`]) owned by whoever runs the models, not process-wide
//! switches: [`RuntimeOptions::scope`] applies them to the calling thread for the duration of
//! a piece of work (a model load, a job), so two pipelines with different options can run side
//! by side on two threads. The backend's operations read them from the thread they run on
//! ([`current`]), a thread-local read per operation. Outside any scope the options are
//! [`RuntimeOptions::from_env`], read once per process.

use std::cell::RefCell;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Kernel choices of the backends (today those of the tuned CUDA path; the CPU and wgpu
/// backends have none and ignore them).
///
/// ```
/// use framepack_models::runtime::{self, RuntimeOptions};
/// let portable = RuntimeOptions::default().tuned_kernels(false);
/// let inside = portable.scope(|| runtime::current().tuned_kernels);
/// assert!(!inside);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeOptions {
    /// CUDA: our tuned operations (cuBLASLt GEMMs, NVRTC kernels, the flash attention).
    /// Off, every operation takes burn's portable path (to compare both on the same inputs).
    pub tuned_kernels: bool,
    /// CUDA: the attention kernel by name (one of `framepack_models::cuda::attention_kernels`);
    /// `None`: the first Hopper kernel that passed its self-test, else the sm_80 kernel.
    pub attention_kernel: Option<String>,
    /// CUDA: whether the Hopper (wgmma) attention kernels may be chosen.
    pub hopper_attention: bool,
    /// CUDA: products of FP8 weights on FP8 tensor cores (each row of activations rounded to
    /// e4m3 with its own scale) where cuBLASLt offers them; off (the default), FP8 weights are
    /// expanded to the compute dtype at every use, as FramePack-eichi does.
    pub fp8_tensor_cores: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            tuned_kernels: true,
            attention_kernel: None,
            hopper_attention: true,
            fp8_tensor_cores: false,
        }
    }
}

impl RuntimeOptions {
    /// The defaults, with the tuned kernels off when the environment has
    /// `FRAMEPACK_PORTABLE_OPS` set (a way to compare paths without rebuilding).
    pub fn from_env() -> Self {
        Self::default().tuned_kernels(std::env::var_os("FRAMEPACK_PORTABLE_OPS").is_none())
    }

    /// Tuned kernels on or off.
    pub fn tuned_kernels(mut self, on: bool) -> Self {
        self.tuned_kernels = on;
        self
    }

    /// The attention kernel by name, or `None` for the best one.
    pub fn attention_kernel(mut self, name: Option<&str>) -> Self {
        self.attention_kernel = name.map(str::to_string);
        self
    }

    /// Hopper attention kernels allowed or not.
    pub fn hopper_attention(mut self, on: bool) -> Self {
        self.hopper_attention = on;
        self
    }

    /// FP8 tensor-core products for FP8 weights on or off.
    pub fn fp8_tensor_cores(mut self, on: bool) -> Self {
        self.fp8_tensor_cores = on;
        self
    }

    /// Runs `work` with these options on the calling thread; the previous ones come back when
    /// it returns or unwinds.
    pub fn scope<R>(&self, work: impl FnOnce() -> R) -> R {
        let _entered = self.enter();
        work()
    }

    /// Applies these options to the calling thread until the returned guard is dropped (for
    /// code where a closure is awkward, e.g. a benchmark's loop). Guards must be dropped in
    /// the reverse order of their creation, as scopes nest; the guard cannot leave the thread.
    pub fn enter(&self) -> Entered {
        let previous = SCOPED.with(|s| s.borrow_mut().replace(self.clone()));
        Entered {
            previous,
            _thread: std::marker::PhantomData,
        }
    }
}

/// The options of [`RuntimeOptions::enter`] in force; dropping it restores the previous ones.
#[must_use = "the options apply only while the guard lives"]
#[derive(Debug)]
pub struct Entered {
    previous: Option<RuntimeOptions>,
    /// Not `Send`: the options belong to the thread that entered them.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SCOPED.with(|s| *s.borrow_mut() = previous);
    }
}

thread_local! {
    /// The options of the innermost [`RuntimeOptions::scope`] on this thread.
    static SCOPED: RefCell<Option<RuntimeOptions>> = const { RefCell::new(None) };
}

/// The options in force on the calling thread: the innermost scope's, else
/// [`RuntimeOptions::from_env`].
pub fn current() -> RuntimeOptions {
    SCOPED
        .with(|s| s.borrow().clone())
        .unwrap_or_else(|| process_default().clone())
}

/// One option in force on the calling thread, without cloning the rest.
pub(crate) fn with_current<R>(read: impl FnOnce(&RuntimeOptions) -> R) -> R {
    SCOPED.with(|s| match s.borrow().as_ref() {
        Some(options) => read(options),
        None => read(process_default()),
    })
}

fn process_default() -> &'static RuntimeOptions {
    static DEFAULT: OnceLock<RuntimeOptions> = OnceLock::new();
    DEFAULT.get_or_init(RuntimeOptions::from_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_restore_and_stay_on_their_thread() {
        let outer = RuntimeOptions::default().fp8_tensor_cores(true);
        let inner = RuntimeOptions::default().attention_kernel(Some("flash_attention_fwd_bf16"));
        outer.scope(|| {
            assert!(current().fp8_tensor_cores);
            inner.scope(|| {
                assert_eq!(current(), inner);
                // Another thread sees its own options, not this scope's.
                let other = std::thread::spawn(current).join().unwrap();
                assert_eq!(other, RuntimeOptions::from_env());
            });
            assert_eq!(current(), outer);
            // An unwinding scope restores the outer options too.
            let caught = std::panic::catch_unwind(|| inner.scope(|| panic!("inside")));
            assert!(caught.is_err());
            assert_eq!(current(), outer);
        });
        assert_eq!(current(), RuntimeOptions::from_env());
    }

    #[test]
    fn options_round_trip_through_json() {
        let o = RuntimeOptions::default()
            .tuned_kernels(false)
            .attention_kernel(Some("k"));
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<RuntimeOptions>(&json).unwrap(), o);
        // Fields missing from an older record take their defaults.
        assert_eq!(
            serde_json::from_str::<RuntimeOptions>("{}").unwrap(),
            RuntimeOptions::default()
        );
    }
}
