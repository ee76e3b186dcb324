//! A redb storage backend that reads a file (through redb's own file
//! backend, which also locks it) and keeps every write in memory: redb can open, repair and check a copy-on-write view of a store
//! without changing a byte of it.
//!
//! redb writes to a file as soon as it opens it (it marks the header
//! "recovery required" until a clean close, and repairs an unclean file in
//! place), so opening a damaged file for real would change it before any
//! check could refuse it. [`RedbStore::open`](crate::RedbStore::open)
//! checks this view first and opens the file only if the check passes.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use ::redb::backends::FileBackend;
use ::redb::StorageBackend;

/// Granularity of the in-memory copies of written parts of the file.
const BLOCK: u64 = 4096;

/// The file, read-only, under an in-memory layer of writes.
#[derive(Debug)]
pub(crate) struct Overlay {
    /// Only read from.
    file: FileBackend,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Bytes below this come from the file where no block was written; it
    /// starts at the file's length and only shrinks (a shortened then
    /// lengthened view reads zeros past the cut, as a real file would).
    backing_len: u64,
    /// The view's length.
    len: u64,
    /// Blocks written, by index; each `BLOCK` bytes long.
    blocks: HashMap<u64, Vec<u8>>,
}

impl Overlay {
    /// A view of `file`, locked as redb locks a database it opens.
    pub(crate) fn new(file: FileBackend) -> io::Result<Self> {
        let len = file.len()?;
        Ok(Self {
            file,
            state: Mutex::new(State {
                backing_len: len,
                len,
                blocks: HashMap::new(),
            }),
        })
    }

    fn state(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| io::Error::other("overlay lock poisoned"))
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the file",
    )
}

impl Overlay {
    /// Block `index` as the view holds it now.
    fn block(&self, state: &State, index: u64) -> io::Result<Vec<u8>> {
        if let Some(b) = state.blocks.get(&index) {
            return Ok(b.clone());
        }
        let start = index * BLOCK;
        let mut buf = self.file.read(
            start,
            state.backing_len.saturating_sub(start).min(BLOCK) as usize,
        )?;
        buf.resize(BLOCK as usize, 0);
        Ok(buf)
    }
}

impl StorageBackend for Overlay {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state()?.len)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let state = self.state()?;
        let end = offset.checked_add(len as u64).ok_or_else(out_of_range)?;
        if end > state.len {
            return Err(out_of_range());
        }
        let mut out = Vec::with_capacity(len);
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let take = (BLOCK - at % BLOCK).min(end - at) as usize;
            let block = self.block(&state, index)?;
            out.extend_from_slice(&block[within..within + take]);
            at += take as u64;
        }
        Ok(out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state()?;
        if len < state.len {
            // Zero the cut-off tail of the last block kept, and forget the
            // blocks past it, so lengthening again reads zeros.
            let last = len / BLOCK;
            if len % BLOCK != 0 {
                let mut block = self.block(&state, last)?;
                block[(len % BLOCK) as usize..].fill(0);
                state.blocks.insert(last, block);
            }
            let keep = len.div_ceil(BLOCK);
            state.blocks.retain(|&i, _| i < keep);
            state.backing_len = state.backing_len.min(len);
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state()?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(out_of_range)?;
        if end > state.len {
            return Err(out_of_range());
        }
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let take = ((BLOCK as usize) - within).min(rest.len());
            let mut block = self.block(&state, index)?;
            block[within..within + take].copy_from_slice(&rest[..take]);
            state.blocks.insert(index, block);
            at += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    #[test]
    fn writes_stay_in_memory_and_reads_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        File::create(&path).unwrap().write_all(&original).unwrap();
        let file = FileBackend::new(File::open(&path).unwrap()).unwrap();
        let view = Overlay::new(file).unwrap();
        assert_eq!(view.len().unwrap(), 10_000);
        assert_eq!(view.read(4090, 10).unwrap(), &original[4090..4100]);
        view.write(4094, &[0xAA; 4]).unwrap();
        let got = view.read(4090, 10).unwrap();
        assert_eq!(&got[..4], &original[4090..4094]);
        assert_eq!(&got[4..8], &[0xAA; 4]);
        assert_eq!(&got[8..], &original[4098..4100]);
        assert!(view.read(9_999, 2).is_err());
        // Shortened then lengthened: zeros past the cut, as a file would.
        view.set_len(5_000).unwrap();
        view.set_len(20_000).unwrap();
        assert_eq!(
            view.read(4_998, 4).unwrap(),
            [original[4998], original[4999], 0, 0]
        );
        assert_eq!(view.read(12_000, 3).unwrap(), [0, 0, 0]);
        view.write(19_999, &[1]).unwrap();
        assert!(view.write(19_999, &[1, 2]).is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            original,
            "the file was changed"
        );
    }
}
