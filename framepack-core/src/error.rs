//! The one error type of `framepack-core`.
//!
//! Every variant names the argument at fault and the value it had, so a caller (the CLI, a
//! UI) can show the message as is. Nothing in this crate panics on user input: invalid
//! requests come back as one of these.

use crate::bucket::{Bucket, ImageSize};
use crate::chain::ImageRole;
use crate::schedule::Mode;

/// Everything that can be wrong with a request handed to `framepack-core`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The video length is zero, negative, infinite or NaN.
    #[error("seconds must be a finite number greater than 0, got {value}")]
    InvalidSeconds {
        /// The length that was asked for, in seconds.
        value: f64,
    },

    /// The video length needs more sections than this crate plans (a guard against overflow).
    #[error("seconds = {seconds} needs {sections} sections, more than the supported {max}")]
    TooManySections {
        /// The length that was asked for, in seconds.
        seconds: f64,
        /// The section count it rounds to (as a float: it may not fit an integer).
        sections: f64,
        /// The largest supported section count.
        max: u32,
    },

    /// A name (mode, flavor, ...) that is not one of the accepted ones.
    #[error("unknown {what} `{value}`: expected {expected}")]
    UnknownName {
        /// What was being named (`mode`, ...).
        what: &'static str,
        /// The name given.
        value: String,
        /// The accepted names.
        expected: &'static str,
    },

    /// The latent window size is 0 or larger than supported.
    #[error("latent window size must be in 1..={max}, got {value}")]
    InvalidWindow {
        /// The window size that was asked for, in latent frames.
        value: u32,
        /// The largest supported window size.
        max: u32,
    },

    /// The constant ("all-padding") value is not a finite number in the supported range.
    #[error("constant padding must be a finite number in 0..={max}, got {value}")]
    InvalidPadding {
        /// The padding that was asked for, in windows.
        value: f64,
        /// The largest supported padding.
        max: f64,
    },

    /// The end-frame strength lies outside `0..=1` (or is NaN).
    #[error("end frame strength must be in 0..=1, got {value}")]
    InvalidEndFrameStrength {
        /// The strength that was asked for.
        value: f64,
    },

    /// The F1 image influence lies outside eichi's `1.0..=1.02` (or is NaN).
    #[error("image influence must be in {min}..={max}, got {value}")]
    InvalidImageInfluence {
        /// The influence that was asked for (1.0 = 100 %).
        value: f64,
        /// The smallest accepted value.
        min: f64,
        /// The largest accepted value.
        max: f64,
    },

    /// A keyframe is configured for a section the video does not have.
    #[error(
        "keyframe for section {section} is past the last section {last} ({sections} sections)"
    )]
    KeyframeOutOfRange {
        /// The section the keyframe was given for (0-based).
        section: u32,
        /// The last section of the plan (`sections - 1`).
        last: u32,
        /// The number of sections of the plan.
        sections: u32,
    },

    /// A section prompt is configured for a section the video does not have.
    #[error("prompt for section {section} is past the last section {last} ({sections} sections)")]
    SectionPromptOutOfRange {
        /// The section the prompt was given for (0-based).
        section: u32,
        /// The last section of the plan (`sections - 1`).
        last: u32,
        /// The number of sections of the plan.
        sections: u32,
    },

    /// An option was given that the chosen mode does not have.
    #[error("{option} is not available in {mode} mode")]
    UnsupportedInMode {
        /// The option, as the builder method names it (`"keyframe"`, `"end_frame"`, ...).
        option: &'static str,
        /// The mode of the request.
        mode: Mode,
    },

    /// An image would be bucketed differently from the start image, so its latent could not
    /// share the start image's tensor shape.
    #[error(
        "{image} ({size}) maps to bucket {bucket}, but the start image maps to {expected}; \
         use an image of the same aspect ratio"
    )]
    BucketMismatch {
        /// Which image is at fault.
        image: ImageRole,
        /// Its source size.
        size: ImageSize,
        /// The bucket it maps to.
        bucket: Bucket,
        /// The start image's bucket.
        expected: Bucket,
    },

    /// The base resolution is not one of the bucket tables.
    #[error("unknown base resolution {value}; available: {available:?}")]
    UnknownResolution {
        /// The base resolution that was asked for.
        value: u32,
        /// The base resolutions that exist.
        available: &'static [u32],
    },

    /// A size is zero.
    #[error("{argument} must be greater than 0")]
    ZeroSize {
        /// The argument at fault (`"height"`, `"width"`, ...).
        argument: &'static str,
    },

    /// A size is not a multiple of what the models need.
    #[error("{argument} must be a multiple of {multiple}, got {value}")]
    NotMultiple {
        /// The argument at fault (`"height"`, `"width"`, ...).
        argument: &'static str,
        /// The value it had.
        value: u32,
        /// The multiple it must be of.
        multiple: u32,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_argument_and_value() {
        let e = Error::InvalidSeconds { value: f64::NAN };
        assert_eq!(
            e.to_string(),
            "seconds must be a finite number greater than 0, got NaN"
        );
        let e = Error::NotMultiple {
            argument: "width",
            value: 1080,
            multiple: 16,
        };
        assert_eq!(e.to_string(), "width must be a multiple of 16, got 1080");
        let e = Error::UnsupportedInMode {
            option: "keyframe",
            mode: Mode::F1,
        };
        assert_eq!(e.to_string(), "keyframe is not available in f1 mode");
    }
}
