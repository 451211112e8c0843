//! Tars for the tests: layers and archives written byte by byte, since a
//! hostile one's names need not be ones the tar crate would write.

pub(crate) enum Kind<'a> {
    Dir,
    File(&'a str),
    Symlink(&'a str),
    HardLink(&'a str),
    Fifo,
    CharDevice,
}

/// A tar of `entries` as (path, kind, uid, mode), written byte by byte
/// into the headers: a hostile layer's names need not be ones the tar
/// crate would write.
pub(crate) fn layer(entries: &[(&str, Kind<'_>, u64, u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, uid, mode) in entries {
        let mut header = tar::Header::new_old();
        let (entry_type, data, link) = match kind {
            Kind::Dir => (tar::EntryType::Directory, "", ""),
            Kind::File(data) => (tar::EntryType::Regular, *data, ""),
            Kind::Symlink(target) => (tar::EntryType::Symlink, "", *target),
            Kind::HardLink(target) => (tar::EntryType::Link, "", *target),
            Kind::Fifo => (tar::EntryType::Fifo, "", ""),
            Kind::CharDevice => (tar::EntryType::Char, "", ""),
        };
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(entry_type);
        header.set_size(data.len() as u64);
        header.set_uid(*uid);
        header.set_gid(*uid);
        header.set_mode(*mode);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, data.as_bytes()).expect("append");
    }
    builder.into_inner().expect("tar")
}

/// A tar of whole files: (name, bytes).
pub(crate) fn files(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("tar")
}
