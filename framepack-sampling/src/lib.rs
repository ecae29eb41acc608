//! FramePack sampling.
