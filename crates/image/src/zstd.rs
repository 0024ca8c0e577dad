//! A streaming zstd decoder for whole layer blobs: every frame in turn
//! (zstd:chunked layers are many frames), skippable frames skipped.
//! ruzstd's own `StreamingDecoder` stops after the first frame.

use std::io::{self, BufRead, Read};

use ruzstd::frame::ReadFrameHeaderError;
use ruzstd::frame_decoder::{BlockDecodingStrategy, FrameDecoder, FrameDecoderError};

pub(crate) struct MultiFrame<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R> std::fmt::Debug for MultiFrame<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiFrame")
            .field("in_frame", &self.in_frame)
            .finish_non_exhaustive()
    }
}

impl<R: BufRead> MultiFrame<R> {
    pub(crate) fn new(source: R) -> Self {
        Self {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

fn zstd_error(e: FrameDecoderError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<R: BufRead> Read for MultiFrame<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.init(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let want = u64::from(length);
                        let skipped =
                            io::copy(&mut (&mut self.source).take(want), &mut io::sink())?;
                        if skipped != want {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        continue;
                    }
                    Err(e) => return Err(zstd_error(e)),
                }
            }
            let d = &mut self.decoder;
            while d.can_collect() < buf.len() && !d.is_finished() {
                let more = buf.len() - d.can_collect();
                d.decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(more))
                    .map_err(zstd_error)?;
            }
            let n = d.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if d.is_finished() && d.can_collect() == 0 {
                self.in_frame = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two frames with a skippable frame between them, as `zstd` writes
    /// when given two inputs; needs the `zstd` program.
    #[test]
    fn decodes_every_frame() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir");
        };
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"first frame ".repeat(1000)).unwrap();
        std::fs::write(&b, b"second").unwrap();
        let run = |f: &std::path::Path| {
            std::process::Command::new("zstd")
                .args(["-q", "-c"])
                .arg(f)
                .output()
        };
        let (Ok(za), Ok(zb)) = (run(&a), run(&b)) else {
            eprintln!("skipped: the zstd program is not installed");
            return;
        };
        let mut blob = za.stdout;
        // A skippable frame: magic 0x184D2A50, length 3, three bytes.
        blob.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        blob.extend_from_slice(&3u32.to_le_bytes());
        blob.extend_from_slice(b"xyz");
        blob.extend_from_slice(&zb.stdout);
        let mut out = Vec::new();
        MultiFrame::new(blob.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        let mut want = b"first frame ".repeat(1000);
        want.extend_from_slice(b"second");
        assert_eq!(out, want);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut out = Vec::new();
        let err = MultiFrame::new(&b"not zstd at all"[..])
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
