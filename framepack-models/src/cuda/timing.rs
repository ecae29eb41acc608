//! GPU time of the tuned operations, for benchmarks: the kernels alone, without the host round
//! trips that order burn's stream and ours around each operation (`engine.rs`).

use std::cell::RefCell;

use cudarc::driver::sys::CUevent_flags;

use super::engine::Engine;

struct Timer {
    repeats: usize,
    seconds: f64,
    ops: usize,
}

thread_local! {
    static TIMER: RefCell<Option<Timer>> = const { RefCell::new(None) };
}

/// What [`time_kernels`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelTime {
    /// Seconds of GPU time per call, summed over the tuned operations.
    pub seconds: f64,
    /// Tuned operations timed.
    pub ops: usize,
}

/// Runs `f` and measures the GPU time of the tuned CUDA operations it calls: each one runs as
/// usual, then `repeats` more times back to back between two CUDA events on the engine's
/// stream, the way PyTorch kernels are timed. Only for operations that give the same output
/// when repeated (products, attention, norms); the convolution's accumulating taps would add
/// up. Operations on the portable path are not counted.
pub fn time_kernels<R>(repeats: usize, f: impl FnOnce() -> R) -> (R, KernelTime) {
    TIMER.with(|t| {
        *t.borrow_mut() = Some(Timer {
            repeats,
            seconds: 0.0,
            ops: 0,
        })
    });
    let result = f();
    let timer = TIMER.with(|t| t.borrow_mut().take());
    let time = timer.map_or(
        KernelTime {
            seconds: 0.0,
            ops: 0,
        },
        |t| KernelTime {
            seconds: t.seconds,
            ops: t.ops,
        },
    );
    (result, time)
}

/// Called by every tuned operation after its work is enqueued: repeats it between events when
/// [`time_kernels`] is active on this thread, else does nothing.
pub(crate) fn repeat(
    engine: &Engine,
    mut work: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let repeats = TIMER.with(|t| t.borrow().as_ref().map(|t| t.repeats));
    let Some(repeats) = repeats.filter(|&r| r > 0) else {
        return Ok(());
    };
    let event_err = |e| format!("timing event: {e:?}");
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = engine.stream.record_event(flags).map_err(event_err)?;
    for _ in 0..repeats {
        work()?;
    }
    let end = engine.stream.record_event(flags).map_err(event_err)?;
    let ms = start.elapsed_ms(&end).map_err(event_err)?;
    TIMER.with(|t| {
        if let Some(t) = t.borrow_mut().as_mut() {
            t.seconds += f64::from(ms) / 1e3 / repeats as f64;
            t.ops += 1;
        }
    });
    Ok(())
}
