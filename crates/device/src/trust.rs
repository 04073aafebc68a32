//! Trust that outlives a firmware release: signed bundles of pinned roots
//! and revocations, fetched over the authenticated link, kept in flash.
//!
//! The operator signs bundles with a key whose public half is built into
//! the firmware (`ferrolink trust keygen`, `ferrolink trust sign`); the
//! server hands the newest one to connected devices
//! ([`crate::Session::update_trust`]). A bundle is taken only if its
//! signature verifies with that key and its sequence is higher than the
//! one held (`ferrolink_proto::trust::accept`), and only then saved; a
//! refused bundle changes nothing. At the next connection,
//! [`crate::tls::TrustConfig::with_bundle`] makes its roots replace the
//! built-in ones and its revocations add to the shipped list.
//!
//! Where the bundle lives is the firmware's business: implement
//! [`TrustStore`] over a flash sector (the Pico W example does), or use
//! [`RamTrustStore`] in tests.

pub use ferrolink_proto::trust::{BundleError, MAX_LEN, TrustBundle, accept, verify};

/// Where the device keeps its newest verified bundle.
#[allow(async_fn_in_trait)]
pub trait TrustStore {
    /// A storage failure.
    type Error: core::fmt::Debug;

    /// Copies the stored bundle into `buf` and returns its length (0 when
    /// nothing is stored). The caller verifies it before use.
    async fn load(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;

    /// Replaces the stored bundle with `bundle`, which has been verified.
    /// Should be atomic as far as the medium allows: a power cut must leave
    /// the old bundle or the new one.
    async fn save(&mut self, bundle: &[u8]) -> Result<(), Self::Error>;
}

/// A [`TrustStore`] in RAM (for tests, or a device that refetches at
/// every boot).
#[derive(Debug, Clone)]
pub struct RamTrustStore<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> RamTrustStore<N> {
    /// An empty store.
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Default for RamTrustStore<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// A bundle does not fit the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFull;

impl<const N: usize> TrustStore for RamTrustStore<N> {
    type Error = StoreFull;

    async fn load(&mut self, buf: &mut [u8]) -> Result<usize, StoreFull> {
        let dst = buf.get_mut(..self.len).ok_or(StoreFull)?;
        dst.copy_from_slice(&self.bytes[..self.len]);
        Ok(self.len)
    }

    async fn save(&mut self, bundle: &[u8]) -> Result<(), StoreFull> {
        self.bytes
            .get_mut(..bundle.len())
            .ok_or(StoreFull)?
            .copy_from_slice(bundle);
        self.len = bundle.len();
        Ok(())
    }
}

/// What [`crate::Session::update_trust`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustUpdate {
    /// The server has nothing newer than the bundle held.
    Current,
    /// A newer bundle was verified and saved; reconnect to use it.
    Updated {
        /// Its sequence.
        sequence: u64,
    },
}

/// Why no bundle was taken. Nothing was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustUpdateError<E: core::fmt::Debug> {
    /// The call to the server failed.
    #[error("asking the server for a trust bundle failed: {0}")]
    Call(crate::CallError),
    /// The server's answer is not a bundle reply.
    #[error("the server's trust bundle reply is malformed")]
    Malformed,
    /// The bundle is larger than the scratch buffer.
    #[error("the trust bundle does not fit the buffer given ({0} bytes)")]
    TooLarge(usize),
    /// The bundle was refused (bad signature, other signer, not newer);
    /// ignored.
    #[error("trust bundle ignored: {0}")]
    Refused(BundleError),
    /// The store failed to save it.
    #[error("the trust store failed: {0:?}")]
    Store(E),
}
