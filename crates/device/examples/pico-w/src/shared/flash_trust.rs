//! The firmware's [`TrustStore`]: the newest verified trust bundle in one
//! of two 4 KiB flash sectors at the end of the Pico W's 2 MiB flash
//! (`memory.x` keeps the program out of them).
//!
//! Each slot holds `"FLTS"`, the bundle's length (u32, little-endian), the
//! SHA-256 of the bundle, then the bundle. A save goes to the slot not
//! holding the newest bundle, so a power cut mid-write leaves a slot whose
//! hash does not match (ignored) and the previous bundle in the other.
//! Loading picks the valid slot whose bundle has the higher sequence; the
//! caller still checks the signature before using it.

use embassy_rp::flash::{Blocking, ERASE_SIZE, Flash};
use embassy_rp::peripherals::FLASH;
use ferrolink_device::trust::TrustStore;
use sha2::{Digest as _, Sha256};

/// The Pico W's flash.
pub const FLASH_SIZE: usize = 2 * 1024 * 1024;
const SLOTS: [u32; 2] = [
    (FLASH_SIZE - 2 * ERASE_SIZE) as u32,
    (FLASH_SIZE - ERASE_SIZE) as u32,
];
const MAGIC: &[u8; 4] = b"FLTS";
const HEADER: usize = 4 + 4 + 32;
/// Largest bundle a slot holds.
pub const MAX_BUNDLE: usize = ERASE_SIZE - HEADER;
/// Where a bundle's sequence sits (after "FLTB", the format and the signer).
const SEQUENCE_AT: usize = 4 + 1 + 32;

/// The trust bundle in flash.
pub struct FlashTrustStore {
    flash: Flash<'static, FLASH, Blocking, FLASH_SIZE>,
}

/// A flash operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub struct FlashError;

impl From<embassy_rp::flash::Error> for FlashError {
    fn from(_: embassy_rp::flash::Error) -> Self {
        Self
    }
}

impl FlashTrustStore {
    /// The store over the flash peripheral.
    pub fn new(flash: Flash<'static, FLASH, Blocking, FLASH_SIZE>) -> Self {
        Self { flash }
    }

    /// Slot `i`'s bundle length and sequence, if the slot is whole (its
    /// hash, computed in pieces straight from flash, matches).
    fn slot(&mut self, i: usize) -> Result<Option<(usize, u64)>, FlashError> {
        let mut header = [0u8; HEADER];
        self.flash.blocking_read(SLOTS[i], &mut header)?;
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if &header[..4] != MAGIC || len > MAX_BUNDLE || len < SEQUENCE_AT + 8 {
            return Ok(None);
        }
        let mut hash = Sha256::new();
        let mut seq = [0u8; 8];
        let mut piece = [0u8; 64];
        let mut at = 0;
        while at < len {
            let n = piece.len().min(len - at);
            self.flash
                .blocking_read(SLOTS[i] + (HEADER + at) as u32, &mut piece[..n])?;
            hash.update(&piece[..n]);
            for (j, b) in piece[..n].iter().enumerate() {
                if let Some(k) = (at + j).checked_sub(SEQUENCE_AT)
                    && k < 8
                {
                    seq[k] = *b;
                }
            }
            at += n;
        }
        if hash.finalize()[..] != header[8..] {
            return Ok(None);
        }
        Ok(Some((len, u64::from_be_bytes(seq))))
    }

    /// The slot holding the newest whole bundle, and its length.
    fn newest(&mut self) -> Result<Option<(usize, usize)>, FlashError> {
        Ok(match (self.slot(0)?, self.slot(1)?) {
            (Some((la, sa)), Some((_, sb))) if sa >= sb => Some((0, la)),
            (_, Some((lb, _))) => Some((1, lb)),
            (Some((la, _)), None) => Some((0, la)),
            (None, None) => None,
        })
    }
}

impl TrustStore for FlashTrustStore {
    type Error = FlashError;

    async fn load(&mut self, buf: &mut [u8]) -> Result<usize, FlashError> {
        let Some((slot, len)) = self.newest()? else {
            return Ok(0);
        };
        let dst = buf.get_mut(..len).ok_or(FlashError)?;
        self.flash.blocking_read(SLOTS[slot] + HEADER as u32, dst)?;
        Ok(len)
    }

    async fn save(&mut self, bundle: &[u8]) -> Result<(), FlashError> {
        if bundle.len() > MAX_BUNDLE {
            return Err(FlashError);
        }
        let target = match self.newest()? {
            Some((0, _)) => 1,
            _ => 0,
        };
        let offset = SLOTS[target];
        self.flash
            .blocking_erase(offset, offset + ERASE_SIZE as u32)?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&(bundle.len() as u32).to_le_bytes());
        header[8..].copy_from_slice(&Sha256::digest(bundle));
        // The bundle first, the header last: a cut anywhere leaves a slot
        // that does not verify.
        self.flash.blocking_write(offset + HEADER as u32, bundle)?;
        self.flash.blocking_write(offset, &header)?;
        Ok(())
    }
}
