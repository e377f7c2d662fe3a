//! A node's data directory: its identity key, its redb store, and, while `lethe serve` runs,
//! the address it listens on (so `lethe --data DIR put ...` can find it).
//!
//! Everything in it is its owner's alone: the directory is mode 0700 and every file in it 0600
//! (the key is the node's identity; the store holds every value). `init` makes them so and
//! [`DataDir::secure`], run at every start, puts back any that were opened up, with a warning.

use lethe_transport::Identity;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The data directory's mode: its owner's alone.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Every file's mode in it.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// What can go wrong with a data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// No identity: the directory was never initialised.
    #[error("{0} holds no node identity; run `lethe init --data {1}` first")]
    NotInitialised(String, String),
    /// `init` on a directory that already has an identity.
    #[error("{0} already holds a node identity (node {1}); refusing to overwrite it")]
    AlreadyInitialised(String, String),
    /// The node is not running.
    #[error("no node is running for {0} (no {1}); start it with `lethe serve --data {0} --listen ADDR`")]
    NotRunning(String, String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The identity file is not a key.
    #[error(transparent)]
    Identity(#[from] lethe_transport::Error),
    /// The address file is damaged.
    #[error("{0} does not hold an address; remove it and restart the node")]
    BadAddress(String),
}

/// A node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir(PathBuf);

impl DataDir {
    /// The directory at `path` (not created or checked yet).
    pub fn new(path: impl Into<PathBuf>) -> DataDir {
        DataDir(path.into())
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }

    fn identity_path(&self) -> PathBuf {
        self.0.join("identity.key")
    }

    /// The redb store.
    #[must_use]
    pub fn store_path(&self) -> PathBuf {
        self.0.join("store.redb")
    }

    fn addr_path(&self) -> PathBuf {
        self.0.join("serve.addr")
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
        move |source| DataDirError::Io { path: path.display().to_string(), source }
    }

    /// Creates the directory and a new identity (private key file readable only by its owner).
    pub fn init(&self) -> Result<Identity, DataDirError> {
        if let Ok(existing) = self.identity() {
            return Err(DataDirError::AlreadyInitialised(self.0.display().to_string(), existing.id().to_string()));
        }
        // Created private (on Unix), not made private after: `secure` then has nothing to warn of.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
        builder.create(&self.0).map_err(Self::io(&self.0))?;
        self.secure()?;
        let identity = Identity::generate()?;
        let path = self.identity_path();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(Self::io(&path))?;
        file.write_all(identity.pkcs8()).map_err(Self::io(&path))?;
        file.sync_all().map_err(Self::io(&path))?;
        Ok(identity)
    }

    /// The node's identity.
    pub fn identity(&self) -> Result<Identity, DataDirError> {
        let path = self.identity_path();
        let der = match std::fs::read(&path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataDirError::NotInitialised(path.display().to_string(), self.0.display().to_string()));
            }
            Err(e) => return Err(Self::io(&path)(e)),
        };
        Ok(Identity::from_pkcs8(&der)?)
    }

    /// Makes the directory mode 0700 and every file in it 0600 (on Unix), warning for each one
    /// that was open to other users. Run before the store is opened, and by `init`; the store
    /// file redb creates is made 0600 here before redb opens it.
    pub fn secure(&self) -> Result<(), DataDirError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let tighten = |path: &Path, mode: u32| -> Result<(), DataDirError> {
                let was = std::fs::metadata(path).map_err(Self::io(path))?.permissions().mode() & 0o777;
                if was != mode {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(Self::io(path))?;
                    if was & 0o077 != 0 {
                        tracing::warn!(
                            "{} was readable by other users (mode {was:o}); made it {mode:o}",
                            path.display()
                        );
                    }
                }
                Ok(())
            };
            tighten(&self.0, DIR_MODE)?;
            // A store redb is about to create is created private, not made private after.
            let store = self.store_path();
            if !store.exists() {
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
                options.open(&store).map_err(Self::io(&store))?;
            }
            for entry in std::fs::read_dir(&self.0).map_err(Self::io(&self.0))? {
                let path = entry.map_err(Self::io(&self.0))?.path();
                if path.is_file() {
                    tighten(&path, FILE_MODE)?;
                }
            }
        }
        Ok(())
    }

    /// Records the address the running node listens on.
    pub fn write_addr(&self, addr: SocketAddr) -> Result<(), DataDirError> {
        let path = self.addr_path();
        let tmp = self.0.join("serve.addr.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
        let mut file = options.open(&tmp).map_err(Self::io(&tmp))?;
        file.write_all(addr.to_string().as_bytes()).map_err(Self::io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(Self::io(&path))
    }

    /// Forgets the address (the node stopped).
    pub fn clear_addr(&self) {
        // Absent already is fine: there is nothing to forget.
        let _ = std::fs::remove_file(self.addr_path());
    }

    /// The address of the running node.
    pub fn addr(&self) -> Result<SocketAddr, DataDirError> {
        let path = self.addr_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| DataDirError::BadAddress(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(DataDirError::NotRunning(self.0.display().to_string(), path.display().to_string()))
            }
            Err(e) => Err(Self::io(&path)(e)),
        }
    }
}
