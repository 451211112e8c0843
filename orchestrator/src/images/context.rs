//! The files one `COPY` or `ADD` step of a Dockerfile build copies, taken
//! from the build context the client uploaded (a tar) and written as a tar
//! named relative to the step's destination directory, ready for the
//! sandbox agent to extract there (confined, owned as `--chown` says).
//!
//! The context is untrusted, so nothing here touches the host's file system
//! with its names: the context tar is read once, entry by entry, and the
//! output tar is written as it goes. Symlinks are copied as symlinks (with
//! whatever target they carry), never followed. The only host file used is
//! an unnamed temporary file in the caller's scratch directory, gone once
//! closed, holding a file's content when it must be read more than once.
//!
//! Decisions:
//! - One pass. Whether an entry is copied, and under what name, follows
//!   from its own name: a source names it, or names a directory above it
//!   (with or without an entry of its own in the tar: an implicit
//!   directory). Sources are checked against every entry as it arrives.
//! - Names are bytes, not strings: a context may hold names that are not
//!   UTF-8. A glob compares a component decoded leniently, so `?` stands
//!   for one character of a UTF-8 name.
//! - Globs are `*`, `?` and `[...]` classes (`[abc]`, `[a-z]`, `[!x]` or
//!   `[^x]`), matched component by component, never across `/`; there is
//!   no escaping, and a `[` without its `]` is an ordinary character.
//! - Parents first: an entry's ancestors are written before it, as
//!   directories of mode 0755 (and the entry's mtime) when the context did
//!   not list them earlier. A name is written once: a later entry with a
//!   name already written is dropped, so when sources overlap the first
//!   one wins (Docker lets the last one win; a stream cannot take back what
//!   it wrote). A name written as a file that a later entry needs as a
//!   directory fails the step.
//! - A file that several sources copy, or that `ADD` may unpack, is
//!   spilled to the scratch file first so its content can be read again;
//!   any other file's content is streamed straight through.
//! - Hard links are copied as hard links when their target is a file or
//!   link this step copies and the context listed it earlier (as tars do):
//!   the target is renamed as it was copied (its first copy, if several).
//!   A hard link to anything else fails the step rather than silently
//!   copying less than asked.
//! - FIFOs, devices, GNU sparse files and other special entries are
//!   skipped.
//! - Permission bits (0o7777, set-id bits included: the agent decides what
//!   to keep) and mtimes are kept; every owner is 0 with no user or group
//!   name, since the agent applies `--chown`.
//! - The digest covers, for every entry written (synthetic directories
//!   included), its kind, name, permission bits, size, link target and
//!   content, framed so that no two different copies hash alike; mtimes and
//!   owners are left out so that touching a file keeps the build cache. It
//!   follows the context's entry order, which the CLI sorts.
//! - `ADD` unpacks a source that names a regular file directly when its
//!   content is a tar (a `ustar` header, or a gzip stream that starts with
//!   one); pre-POSIX tars, bzip2 and xz are copied as files. An archive's
//!   entries get the same treatment as the context's, and archives inside
//!   an archive or inside a copied directory are not unpacked.

use super::ImageError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tar::EntryType;

/// Mode of the directories written for parents the context did not list.
const SYNTHETIC_DIR_MODE: u32 = 0o755;
/// The permission bits kept from an entry.
const PERMISSION_BITS: u32 = 0o7777;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Where a ustar (POSIX or GNU) header carries its magic.
const USTAR_MAGIC_AT: usize = 257;
const USTAR_MAGIC: &[u8] = b"ustar";
const TAR_BLOCK: usize = 512;

/// Where the copied entries go, relative to the directory the output tar is extracted at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// Into the directory: a file source keeps its base name, a directory source's contents land in it.
    Dir,
    /// One file, renamed to this base name (COPY a.txt /app/b.txt); the caller extracts at `/app`.
    File(String),
}

#[derive(Debug, Clone)]
pub struct CopyPlan<'a> {
    /// As written in the Dockerfile, already variable-expanded.
    pub sources: &'a [String],
    pub dest: Dest,
    /// ADD: a source that is itself a tar archive (plain or gzip) is unpacked into the destination instead of copied.
    pub extract_archives: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Entries written to the output tar.
    pub entries: u64,
    /// `sha256:<hex>` over what was copied: each entry's kind, name (as in the output), permission bits, size, link target and content; NOT mtimes or owners (so touching a file does not invalidate the build cache, editing it does).
    pub digest: String,
}

/// Reads the context tar `context` and writes to `out` the tar of what `plan` copies. `scratch` is a private host dir where an ADD archive source may be spilled to a temp file while it is detected and unpacked (remove it after).
pub fn copy_entries(
    context: impl Read,
    plan: &CopyPlan<'_>,
    out: impl Write,
    scratch: &Path,
) -> Result<Copied, ImageError> {
    let mut copier = Copier::new(plan, out, scratch)?;
    let mut archive = tar::Archive::new(context);
    let malformed = |err: io::Error| {
        ImageError::Invalid(format!("the build context is not a well-formed tar: {err}"))
    };
    for entry in archive.entries().map_err(malformed)? {
        copier.context_entry(entry.map_err(malformed)?)?;
    }
    copier.finish()
}

/// The kinds of entries copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    HardLink,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Dir => b'd',
            Kind::File => b'f',
            Kind::Symlink => b's',
            Kind::HardLink => b'h',
        }
    }

    fn entry_type(self) -> EntryType {
        match self {
            Kind::Dir => EntryType::Directory,
            Kind::File => EntryType::Regular,
            Kind::Symlink => EntryType::Symlink,
            Kind::HardLink => EntryType::Link,
        }
    }
}

/// An entry as copied, without its name.
#[derive(Debug, Clone)]
struct Item {
    kind: Kind,
    mode: u32,
    mtime: u64,
    /// Content length; 0 for anything but a file.
    size: u64,
    /// A link's target (for a hard link, a name in the same tar).
    link: Vec<u8>,
}

impl Item {
    fn synthetic_dir(mtime: u64) -> Self {
        Item {
            kind: Kind::Dir,
            mode: SYNTHETIC_DIR_MODE,
            mtime,
            size: 0,
            link: Vec::new(),
        }
    }

    /// What `entry` (named `raw`) is, or `None` for a kind not copied.
    fn of<R: Read>(entry: &tar::Entry<'_, R>, raw: &[u8]) -> Result<Option<Self>, ImageError> {
        let header = entry.header();
        let kind = match header.entry_type() {
            // Pre-POSIX tars mark directories with a trailing slash.
            EntryType::Regular if raw.ends_with(b"/") => Kind::Dir,
            EntryType::Directory => Kind::Dir,
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::HardLink,
            _ => return Ok(None),
        };
        let bad_field = |field: &str, err: io::Error| {
            ImageError::Invalid(format!(
                "{}: bad {field} in its tar header: {err}",
                shown(raw)
            ))
        };
        let mode = header.mode().map_err(|err| bad_field("mode", err))?;
        let mtime = header.mtime().map_err(|err| bad_field("mtime", err))?;
        let link = match kind {
            Kind::Symlink | Kind::HardLink => link_target(entry, raw)?,
            Kind::Dir | Kind::File => Vec::new(),
        };
        Ok(Some(Item {
            kind,
            mode: mode & PERMISSION_BITS,
            mtime,
            size: if kind == Kind::File { entry.size() } else { 0 },
            link,
        }))
    }

    /// Whether a hard link may point at this entry once copied.
    fn is_link_target(&self) -> bool {
        matches!(self.kind, Kind::File | Kind::HardLink)
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, raw: &[u8]) -> Result<Vec<u8>, ImageError> {
    match entry.link_name_bytes() {
        Some(target) if !target.is_empty() => Ok(target.into_owned()),
        _ => Err(ImageError::Invalid(format!(
            "{} is a link without a target",
            shown(raw)
        ))),
    }
}

/// `raw` (a name in a tar) as components joined by `/`, without `.`,
/// empty components or a leading `/`: empty for the tar's root, `None`
/// when a component is `..`.
fn normalize_name(raw: &[u8]) -> Option<Vec<u8>> {
    let mut name = Vec::with_capacity(raw.len());
    for component in raw.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return None,
            _ => {
                if !name.is_empty() {
                    name.push(b'/');
                }
                name.extend_from_slice(component);
            }
        }
    }
    Some(name)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    [dir, b"/", name].concat()
}

fn base_name(name: &[u8]) -> &[u8] {
    name.rsplit(|&byte| byte == b'/').next().unwrap_or(name)
}

fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn has_glob_characters(source: &str) -> bool {
    source.contains(['*', '?', '['])
}

/// What a source matches.
#[derive(Debug)]
enum Pattern {
    /// The whole context (`.`).
    Everything,
    /// One path, matched exactly.
    Path(Vec<u8>),
    /// One glob per component.
    Glob(Vec<Vec<char>>),
}

/// How an entry a source matches is placed.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// Inside a matched directory, at this path relative to it (empty: the
    /// directory itself, which is not copied).
    Within(Vec<u8>),
    /// The source matches the entry itself, a non-directory.
    Itself,
}

impl Pattern {
    fn parse(source: &str) -> Option<Self> {
        let name = normalize_name(source.as_bytes())?;
        if name.is_empty() {
            return Some(Pattern::Everything);
        }
        if !has_glob_characters(source) {
            return Some(Pattern::Path(name));
        }
        let globs = name
            .split(|&byte| byte == b'/')
            .map(|component| String::from_utf8_lossy(component).chars().collect())
            .collect();
        Some(Pattern::Glob(globs))
    }

    /// Where the entry `name` goes if this pattern copies it.
    fn place(&self, name: &[u8], is_dir: bool) -> Option<Placement> {
        let matched = |rest: &[u8]| {
            Some(match rest {
                b"" if !is_dir => Placement::Itself,
                _ => Placement::Within(rest.to_vec()),
            })
        };
        match self {
            Pattern::Everything => Some(Placement::Within(name.to_vec())),
            Pattern::Path(path) => match name.strip_prefix(path.as_slice())? {
                b"" => matched(b""),
                [b'/', rest @ ..] => matched(rest),
                _ => None,
            },
            Pattern::Glob(globs) => {
                let rest = glob_prefix_rest(globs, name)?;
                matched(rest)
            }
        }
    }
}

/// What follows in `name` once its first components match `globs`, one
/// each; `None` when they do not (or `name` has fewer components).
fn glob_prefix_rest<'n>(globs: &[Vec<char>], name: &'n [u8]) -> Option<&'n [u8]> {
    let mut rest = name;
    for (index, glob) in globs.iter().enumerate() {
        let (component, after) = match rest.iter().position(|&byte| byte == b'/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        if component.is_empty() && index > 0 {
            return None;
        }
        let decoded: Vec<char> = String::from_utf8_lossy(component).chars().collect();
        if !glob_matches(glob, &decoded) {
            return None;
        }
        rest = after;
    }
    Some(rest)
}

/// Whether `text` (one component) matches `pattern`: the usual wildcard
/// walk that, on a mismatch, resumes after the last `*` one character
/// further, so time stays proportional to the lengths' product.
fn glob_matches(pattern: &[char], text: &[char]) -> bool {
    let (mut at_pattern, mut at_text) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while at_text < text.len() {
        if pattern.get(at_pattern) == Some(&'*') {
            at_pattern += 1;
            last_star = Some((at_pattern, at_text));
        } else if let Some(next) = match_one(pattern, at_pattern, text[at_text]) {
            at_pattern = next;
            at_text += 1;
        } else if let Some((after_star, star_text)) = last_star {
            at_pattern = after_star;
            at_text = star_text + 1;
            last_star = Some((after_star, at_text));
        } else {
            return false;
        }
    }
    pattern[at_pattern..].iter().all(|&c| c == '*')
}

/// Where the pattern continues if its element at `at` matches the one
/// character `c`.
fn match_one(pattern: &[char], at: usize, c: char) -> Option<usize> {
    let element = *pattern.get(at)?;
    if element == '?' {
        return Some(at + 1);
    }
    if element == '[' {
        if let Some((matched, next)) = match_class(pattern, at + 1, c) {
            return matched.then_some(next);
        }
    }
    (element == c).then_some(at + 1)
}

/// Whether `c` is in the class starting after its `[` at `start`, and
/// where the pattern continues after its `]`; `None` when no `]` closes it.
fn match_class(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let negated = matches!(pattern.get(start), Some('!' | '^'));
    let mut at = if negated { start + 1 } else { start };
    let mut found = false;
    loop {
        let first = *pattern.get(at)?;
        if first == ']' {
            return Some((found != negated, at + 1));
        }
        match (pattern.get(at + 1), pattern.get(at + 2)) {
            (Some('-'), Some(&last)) if last != ']' => {
                found |= (first..=last).contains(&c);
                at += 3;
            }
            _ => {
                found |= first == c;
                at += 1;
            }
        }
    }
}

/// A source as written and what it matches.
#[derive(Debug)]
struct Source {
    written: String,
    pattern: Pattern,
    matched: bool,
}

/// What to do with a selected entry.
#[derive(Debug)]
enum Target {
    /// Write it at this name.
    Place(Vec<u8>),
    /// ADD: unpack it into `into` if it is an archive, else write it at
    /// `file`.
    Unpack { file: Vec<u8>, into: Vec<u8> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveForm {
    Tar,
    GzipTar,
}

/// One step's copy in progress.
struct Copier<'p, W: Write> {
    sources: Vec<Source>,
    dest: &'p Dest,
    extract_archives: bool,
    /// `COPY` or `ADD`, for messages.
    instruction: &'static str,
    /// Whether the one file a `Dest::File` names has been placed.
    file_dest_taken: bool,
    /// Context names of the files and hard links written, with the name
    /// of their first copy: what a later hard link may point at.
    copied_files: HashMap<Vec<u8>, Vec<u8>>,
    output: Output<W>,
    scratch: &'p Path,
}

impl<'p, W: Write> Copier<'p, W> {
    fn new(plan: &'p CopyPlan<'_>, out: W, scratch: &'p Path) -> Result<Self, ImageError> {
        let instruction = if plan.extract_archives { "ADD" } else { "COPY" };
        let sources = plan
            .sources
            .iter()
            .map(|written| {
                let pattern = Pattern::parse(written).ok_or_else(|| {
                    ImageError::Invalid(format!(
                        "{instruction} source {written} is outside the build context"
                    ))
                })?;
                let matched = matches!(pattern, Pattern::Everything);
                Ok(Source {
                    written: written.clone(),
                    pattern,
                    matched,
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        if sources.is_empty() {
            return Err(ImageError::Invalid(format!(
                "{instruction} without a source"
            )));
        }
        let copier = Copier {
            sources,
            dest: &plan.dest,
            extract_archives: plan.extract_archives,
            instruction,
            file_dest_taken: false,
            copied_files: HashMap::new(),
            output: Output::new(out),
            scratch,
        };
        copier.check_dest()?;
        Ok(copier)
    }

    fn check_dest(&self) -> Result<(), ImageError> {
        let Dest::File(name) = self.dest else {
            return Ok(());
        };
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(ImageError::Invalid(format!(
                "{} destination file name {name:?} is not a base name",
                self.instruction
            )));
        }
        if self.sources.len() > 1 {
            return Err(self.needs_dir_dest());
        }
        Ok(())
    }

    fn needs_dir_dest(&self) -> ImageError {
        ImageError::Invalid(format!(
            "{} with more than one source, or a directory, needs a destination ending in /",
            self.instruction
        ))
    }

    fn context_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let name = normalize_name(&raw).ok_or_else(|| {
            ImageError::Invalid(format!(
                "the build context holds {}, a name with a '..' component",
                shown(&raw)
            ))
        })?;
        if name.is_empty() {
            return Ok(());
        }
        let Some(mut item) = Item::of(&entry, &raw)? else {
            return Ok(());
        };
        let targets = self.targets_of(&name, &item)?;
        if targets.is_empty() {
            return Ok(());
        }
        if item.kind == Kind::HardLink {
            item.link = self.renamed_link_target(&name, &item.link)?;
        }
        match targets.as_slice() {
            [Target::Place(out)] if item.kind == Kind::File => {
                self.place(&name, out, &item, &mut entry)
            }
            _ if item.kind == Kind::File => {
                let mut spilled = self.spill(&mut entry, &name, item.size)?;
                for target in &targets {
                    self.place_spilled(&name, target, &item, &mut spilled)?;
                }
                Ok(())
            }
            _ => {
                for target in &targets {
                    if let Target::Place(out) = target {
                        self.place(&name, out, &item, io::empty())?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Where every source that selects the entry `name` puts it.
    fn targets_of(&mut self, name: &[u8], item: &Item) -> Result<Vec<Target>, ImageError> {
        let mut targets = Vec::new();
        for index in 0..self.sources.len() {
            let source = &mut self.sources[index];
            let Some(placement) = source.pattern.place(name, item.kind == Kind::Dir) else {
                continue;
            };
            source.matched = true;
            if let Some(target) = self.target_for(placement, name, item)? {
                targets.push(target);
            }
        }
        Ok(targets)
    }

    fn target_for(
        &mut self,
        placement: Placement,
        name: &[u8],
        item: &Item,
    ) -> Result<Option<Target>, ImageError> {
        let rel = match (placement, self.dest) {
            (Placement::Within(_), Dest::File(_)) => return Err(self.needs_dir_dest()),
            (Placement::Within(rel), Dest::Dir) if rel.is_empty() => return Ok(None),
            (Placement::Within(rel), Dest::Dir) => return Ok(Some(Target::Place(rel))),
            (Placement::Itself, Dest::Dir) => (base_name(name).to_vec(), Vec::new()),
            (Placement::Itself, Dest::File(file)) => {
                if self.file_dest_taken {
                    return Err(self.needs_dir_dest());
                }
                self.file_dest_taken = true;
                (file.as_bytes().to_vec(), file.as_bytes().to_vec())
            }
        };
        let (file, into) = rel;
        if self.extract_archives && item.kind == Kind::File {
            return Ok(Some(Target::Unpack { file, into }));
        }
        Ok(Some(Target::Place(file)))
    }

    /// The output name of the hard link `name`'s target `target`.
    fn renamed_link_target(&self, name: &[u8], target: &[u8]) -> Result<Vec<u8>, ImageError> {
        normalize_name(target)
            .and_then(|target| self.copied_files.get(&target))
            .cloned()
            .ok_or_else(|| {
                ImageError::Invalid(format!(
                    "{} copies the hard link {} but not its target {}",
                    self.instruction,
                    shown(name),
                    shown(target)
                ))
            })
    }

    fn place(
        &mut self,
        name: &[u8],
        out: &[u8],
        item: &Item,
        content: impl Read,
    ) -> Result<(), ImageError> {
        if self.output.emit(out, item, content)? && item.is_link_target() {
            self.copied_files
                .entry(name.to_vec())
                .or_insert_with(|| out.to_vec());
        }
        Ok(())
    }

    fn place_spilled(
        &mut self,
        name: &[u8],
        target: &Target,
        item: &Item,
        spilled: &mut File,
    ) -> Result<(), ImageError> {
        spilled
            .rewind()
            .map_err(ImageError::io("rewinding a spilled file"))?;
        match target {
            Target::Place(out) => self.place(name, out, item, &mut *spilled),
            Target::Unpack { file, into } => match archive_form(spilled)? {
                Some(form) => self.unpack(name, spilled, form, into, item.mtime),
                None => self.place(name, file, item, &mut *spilled),
            },
        }
    }

    /// `content` (`size` bytes of the entry `name`) in an unnamed file in
    /// the scratch directory.
    fn spill(&self, content: &mut impl Read, name: &[u8], size: u64) -> Result<File, ImageError> {
        let mut file = tempfile::tempfile_in(self.scratch).map_err(ImageError::io(format!(
            "cannot make a temporary file in {}",
            self.scratch.display()
        )))?;
        let spilled = io::copy(&mut content.take(size), &mut file)
            .map_err(ImageError::io(format!("spilling {}", shown(name))))?;
        if spilled != size {
            return Err(truncated(name));
        }
        Ok(file)
    }

    /// ADD: the entries of the archive `archive` (the context's file
    /// `name`) written under `into`.
    fn unpack(
        &mut self,
        name: &[u8],
        archive: &mut File,
        form: ArchiveForm,
        into: &[u8],
        mtime: u64,
    ) -> Result<(), ImageError> {
        let reader: Box<dyn Read + '_> = match form {
            ArchiveForm::Tar => Box::new(archive),
            ArchiveForm::GzipTar => Box::new(flate2::read::GzDecoder::new(archive)),
        };
        if !into.is_empty() {
            self.output.ensure_dir(into, mtime)?;
        }
        let malformed = |err: io::Error| {
            ImageError::Invalid(format!(
                "ADD {}: not a well-formed archive: {err}",
                shown(name)
            ))
        };
        let mut unpacked = Unpacked::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(malformed)? {
            let entry = entry.map_err(malformed)?;
            unpacked.entry(&mut self.output, name, into, entry)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<Copied, ImageError> {
        if let Some(missing) = self.sources.iter().find(|source| !source.matched) {
            return Err(ImageError::Invalid(format!(
                "{} source {} is not in the build context",
                self.instruction, missing.written
            )));
        }
        self.output.finish()
    }
}

/// The names an archive being unpacked by ADD has written so far, for its
/// hard links.
#[derive(Default)]
struct Unpacked {
    copied_files: HashMap<Vec<u8>, Vec<u8>>,
}

impl Unpacked {
    fn entry<W: Write, R: Read>(
        &mut self,
        output: &mut Output<W>,
        archive: &[u8],
        into: &[u8],
        mut entry: tar::Entry<'_, R>,
    ) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let in_archive =
            |what: String| ImageError::Invalid(format!("ADD {}: {what}", shown(archive)));
        let name = normalize_name(&raw)
            .ok_or_else(|| in_archive(format!("{} has a '..' component", shown(&raw))))?;
        if name.is_empty() {
            return Ok(());
        }
        let Some(mut item) = Item::of(&entry, &raw)? else {
            return Ok(());
        };
        if item.kind == Kind::HardLink {
            item.link = normalize_name(&item.link)
                .and_then(|target| self.copied_files.get(&target))
                .cloned()
                .ok_or_else(|| {
                    in_archive(format!(
                        "the hard link {} points at {}, not an earlier file of the archive",
                        shown(&raw),
                        shown(&item.link)
                    ))
                })?;
        }
        let out = join(into, &name);
        if output.emit(&out, &item, &mut entry)? && item.is_link_target() {
            self.copied_files.entry(name).or_insert(out);
        }
        Ok(())
    }
}

/// Whether the spilled file is a tar, plain or gzipped; it is rewound
/// after.
fn archive_form(file: &mut File) -> Result<Option<ArchiveForm>, ImageError> {
    let rewind = |file: &mut File| {
        file.rewind()
            .map_err(ImageError::io("rewinding a spilled file"))
    };
    let mut head = [0u8; TAR_BLOCK];
    let len = read_up_to(file, &mut head).map_err(ImageError::io("reading a spilled file"))?;
    rewind(file)?;
    let form = if head[..len].starts_with(&GZIP_MAGIC) {
        let mut unzipped = [0u8; TAR_BLOCK];
        // A stream that does not inflate is no archive, just a file.
        let len =
            read_up_to(&mut flate2::read::GzDecoder::new(&mut *file), &mut unzipped).unwrap_or(0);
        rewind(file)?;
        has_ustar_magic(&unzipped[..len]).then_some(ArchiveForm::GzipTar)
    } else {
        has_ustar_magic(&head[..len]).then_some(ArchiveForm::Tar)
    };
    Ok(form)
}

fn has_ustar_magic(header: &[u8]) -> bool {
    header.get(USTAR_MAGIC_AT..USTAR_MAGIC_AT + USTAR_MAGIC.len()) == Some(USTAR_MAGIC)
}

/// Reads until `buffer` is full or the reader ends; how much was read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

fn truncated(name: &[u8]) -> ImageError {
    ImageError::Invalid(format!(
        "the build context ends inside {}, before the size its header gives",
        shown(name)
    ))
}

/// The tar being written, what it holds and its digest.
struct Output<W: Write> {
    tar: tar::Builder<W>,
    /// Every name written, and whether it is a directory.
    written: HashMap<Vec<u8>, bool>,
    digest: Sha256,
    entries: u64,
}

impl<W: Write> Output<W> {
    fn new(out: W) -> Self {
        Output {
            tar: tar::Builder::new(out),
            written: HashMap::new(),
            digest: Sha256::new(),
            entries: 0,
        }
    }

    /// Writes `item` at `name` after its parents; false (and nothing
    /// written) when `name` was written before.
    fn emit(&mut self, name: &[u8], item: &Item, content: impl Read) -> Result<bool, ImageError> {
        if self.written.contains_key(name) {
            return Ok(false);
        }
        self.ensure_parents(name, item.mtime)?;
        self.write(name, item, content)?;
        self.written.insert(name.to_vec(), item.kind == Kind::Dir);
        Ok(true)
    }

    fn ensure_parents(&mut self, name: &[u8], mtime: u64) -> Result<(), ImageError> {
        let parent_ends: Vec<usize> = name
            .iter()
            .enumerate()
            .filter_map(|(at, &byte)| (byte == b'/').then_some(at))
            .collect();
        for end in parent_ends {
            self.ensure_dir(&name[..end], mtime)?;
        }
        Ok(())
    }

    /// Writes a directory at `name` unless one is there already.
    fn ensure_dir(&mut self, name: &[u8], mtime: u64) -> Result<(), ImageError> {
        match self.written.get(name) {
            Some(true) => Ok(()),
            Some(false) => Err(ImageError::Invalid(format!(
                "{} is copied as a file and needed as a directory",
                shown(name)
            ))),
            None => {
                self.write(name, &Item::synthetic_dir(mtime), io::empty())?;
                self.written.insert(name.to_vec(), true);
                Ok(())
            }
        }
    }

    fn write(&mut self, name: &[u8], item: &Item, content: impl Read) -> Result<(), ImageError> {
        self.digest_entry(name, item);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(item.kind.entry_type());
        header.set_mode(item.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(item.mtime);
        header.set_size(item.size);
        let path = Path::new(OsStr::from_bytes(name));
        let failed = ImageError::io(format!("writing {} to the copy", shown(name)));
        match item.kind {
            Kind::Symlink | Kind::HardLink => {
                let target = Path::new(OsStr::from_bytes(&item.link));
                self.tar
                    .append_link(&mut header, path, target)
                    .map_err(failed)?;
            }
            Kind::Dir => self
                .tar
                .append_data(&mut header, path, io::empty())
                .map_err(failed)?,
            Kind::File => {
                let mut hashed = Hashed {
                    inner: content.take(item.size),
                    digest: &mut self.digest,
                    read: 0,
                };
                self.tar
                    .append_data(&mut header, path, &mut hashed)
                    .map_err(failed)?;
                if hashed.read != item.size {
                    return Err(truncated(name));
                }
            }
        }
        self.entries += 1;
        Ok(())
    }

    /// Everything but the content, framed: lengths before variable fields,
    /// and the content's length is in the size.
    fn digest_entry(&mut self, name: &[u8], item: &Item) {
        let digest = &mut self.digest;
        digest.update([item.kind.tag()]);
        digest.update((name.len() as u64).to_be_bytes());
        digest.update(name);
        digest.update(item.mode.to_be_bytes());
        digest.update(item.size.to_be_bytes());
        digest.update((item.link.len() as u64).to_be_bytes());
        digest.update(&item.link);
    }

    fn finish(self) -> Result<Copied, ImageError> {
        let mut out = self
            .tar
            .into_inner()
            .map_err(ImageError::io("finishing the copy"))?;
        out.flush().map_err(ImageError::io("finishing the copy"))?;
        Ok(Copied {
            entries: self.entries,
            digest: format!("sha256:{:x}", self.digest.finalize()),
        })
    }
}

/// A reader that adds what it reads to the digest, and counts it.
struct Hashed<'d, R> {
    inner: R,
    digest: &'d mut Sha256,
    read: u64,
}

impl<R: Read> Read for Hashed<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.digest.update(&buffer[..read]);
        self.read += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::test_tar::{gzip, Kind as In};

    const MTIME: u64 = 1_700_000_000;

    /// A context tar of (name, kind, mode), all owned by 1000.
    fn context(entries: &[(&str, In<'_>, u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, mode) in entries {
            append_entry(&mut builder, name, kind, *mode, MTIME);
        }
        builder.into_inner().expect("tar")
    }

    /// A context tar of (name, kind, mode, mtime), all owned by 1000.
    fn context_at(entries: &[(&str, In<'_>, u32, u64)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, mode, mtime) in entries {
            append_entry(&mut builder, name, kind, *mode, *mtime);
        }
        builder.into_inner().expect("tar")
    }

    /// Appends a ustar entry, its names written byte by byte: a hostile
    /// context's names need not be ones the tar crate would write.
    fn append_entry(
        builder: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: &In<'_>,
        mode: u32,
        mtime: u64,
    ) {
        let (entry_type, data, link) = match kind {
            In::Dir => (EntryType::Directory, "", ""),
            In::File(data) => (EntryType::Regular, *data, ""),
            In::Symlink(target) => (EntryType::Symlink, "", *target),
            In::HardLink(target) => (EntryType::Link, "", *target),
            In::Fifo => (EntryType::Fifo, "", ""),
            In::CharDevice => (EntryType::Char, "", ""),
        };
        let mut header = tar::Header::new_ustar();
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(entry_type);
        header.set_size(data.len() as u64);
        header.set_uid(1000);
        header.set_gid(1000);
        header.set_username("someone").expect("username");
        header.set_mode(mode);
        header.set_mtime(mtime);
        header.set_cksum();
        builder.append(&header, data.as_bytes()).expect("append");
    }

    /// A context tar holding one file with these bytes.
    fn context_with_file(name: &str, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, data)
            .expect("append");
        builder.into_inner().expect("tar")
    }

    /// An entry of the output, as extracted would see it.
    #[derive(Debug, PartialEq, Eq)]
    struct Out {
        name: String,
        kind: char,
        mode: u32,
        link: String,
        data: Vec<u8>,
    }

    fn out(name: &str, kind: char, mode: u32, link: &str, data: &str) -> Out {
        Out {
            name: name.into(),
            kind,
            mode,
            link: link.into(),
            data: data.as_bytes().to_vec(),
        }
    }

    fn dir(name: &str, mode: u32) -> Out {
        out(name, 'd', mode, "", "")
    }

    fn file(name: &str, data: &str) -> Out {
        out(name, 'f', 0o644, "", data)
    }

    /// Runs a copy; the output's entries (checking owners are 0 and
    /// nameless) and what it reported.
    fn run(
        tar: &[u8],
        sources: &[&str],
        dest: Dest,
        extract_archives: bool,
    ) -> Result<(Vec<Out>, Copied), ImageError> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        let plan = CopyPlan {
            sources: &sources,
            dest,
            extract_archives,
        };
        let scratch = tempfile::tempdir().expect("scratch");
        let mut written = Vec::new();
        let copied = copy_entries(tar, &plan, &mut written, scratch.path())?;
        assert_eq!(
            std::fs::read_dir(scratch.path()).expect("scratch").count(),
            0,
            "scratch left behind"
        );
        Ok((read_output(&written), copied))
    }

    fn read_output(tar: &[u8]) -> Vec<Out> {
        let mut archive = tar::Archive::new(tar);
        let mut entries = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let header = entry.header();
            assert_eq!(header.uid().expect("uid"), 0);
            assert_eq!(header.gid().expect("gid"), 0);
            assert_eq!(header.username().expect("user"), Some(""));
            assert_eq!(header.groupname().expect("group"), Some(""));
            let kind = match header.entry_type() {
                EntryType::Directory => 'd',
                EntryType::Regular => 'f',
                EntryType::Symlink => 's',
                EntryType::Link => 'h',
                other => panic!("unexpected {other:?}"),
            };
            let mode = header.mode().expect("mode");
            let name = String::from_utf8(entry.path_bytes().into_owned()).expect("utf-8");
            let link = entry
                .link_name_bytes()
                .map(|link| String::from_utf8(link.into_owned()).expect("utf-8"))
                .unwrap_or_default();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("data");
            entries.push(Out {
                data,
                ..out(&name, kind, mode, &link, "")
            });
        }
        entries
    }

    fn copy(tar: &[u8], sources: &[&str], dest: Dest) -> Vec<Out> {
        let (entries, copied) = run(tar, sources, dest, false).expect("copy");
        assert_eq!(copied.entries, entries.len() as u64);
        entries
    }

    fn refused(tar: &[u8], sources: &[&str], dest: Dest) -> String {
        match run(tar, sources, dest, false) {
            Err(ImageError::Invalid(reason)) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn sample() -> Vec<u8> {
        context(&[
            ("./", In::Dir, 0o755),
            ("./Dockerfile", In::File("FROM x"), 0o644),
            ("./a.txt", In::File("a"), 0o644),
            ("./main.py", In::File("main"), 0o644),
            ("./src/", In::Dir, 0o750),
            ("./src/notes.txt", In::File("notes"), 0o600),
            ("./src/run.sh", In::File("run"), 0o755),
            ("./src/tool.py", In::File("tool"), 0o644),
            ("./src/deep/", In::Dir, 0o700),
            ("./src/deep/more.txt", In::File("more"), 0o644),
            ("./src/pipe", In::Fifo, 0o644),
        ])
    }

    #[test]
    fn a_file_keeps_its_base_name_in_a_dir_or_takes_the_given_one() {
        assert_eq!(copy(&sample(), &["a.txt"], Dest::Dir), [file("a.txt", "a")]);
        assert_eq!(
            copy(&sample(), &["/src/notes.txt"], Dest::Dir),
            [out("notes.txt", 'f', 0o600, "", "notes")]
        );
        assert_eq!(
            copy(&sample(), &["./a.txt"], Dest::File("b.txt".into())),
            [file("b.txt", "a")]
        );
    }

    #[test]
    fn a_directory_copies_its_contents_with_modes_kept_and_owners_zeroed() {
        assert_eq!(
            copy(&sample(), &["src/"], Dest::Dir),
            [
                out("notes.txt", 'f', 0o600, "", "notes"),
                out("run.sh", 'f', 0o755, "", "run"),
                file("tool.py", "tool"),
                dir("deep", 0o700),
                file("deep/more.txt", "more"),
            ]
        );
        assert_eq!(
            copy(&sample(), &["src/deep"], Dest::Dir),
            [file("more.txt", "more")]
        );
    }

    #[test]
    fn the_whole_context_is_copied_without_its_root() {
        let everything = copy(&sample(), &["."], Dest::Dir);
        let names: Vec<&str> = everything.iter().map(|entry| entry.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Dockerfile",
                "a.txt",
                "main.py",
                "src",
                "src/notes.txt",
                "src/run.sh",
                "src/tool.py",
                "src/deep",
                "src/deep/more.txt",
            ]
        );
        assert_eq!(everything[3], dir("src", 0o750));
        assert_eq!(copy(&sample(), &["/"], Dest::Dir), everything);
    }

    #[test]
    fn globs_match_one_component_at_a_time() {
        assert_eq!(
            copy(&sample(), &["*.py"], Dest::Dir),
            [file("main.py", "main")]
        );
        assert_eq!(
            copy(&sample(), &["src/*.txt"], Dest::Dir),
            [out("notes.txt", 'f', 0o600, "", "notes")]
        );
        assert_eq!(
            copy(&sample(), &["s?c/[r-t]*"], Dest::Dir),
            [
                out("run.sh", 'f', 0o755, "", "run"),
                file("tool.py", "tool")
            ]
        );
        assert_eq!(
            copy(&sample(), &["src/[!nrt]*"], Dest::Dir),
            [file("more.txt", "more")],
            "a glob matching a directory copies its contents"
        );
    }

    #[test]
    fn the_glob_matcher() {
        let matches = |pattern: &str, text: &str| {
            let pattern: Vec<char> = pattern.chars().collect();
            let text: Vec<char> = text.chars().collect();
            glob_matches(&pattern, &text)
        };
        assert!(matches("*", ""));
        assert!(matches("*.py", "a.py"));
        assert!(!matches("*.py", "a.pyc"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(matches("?é", "xé"));
        assert!(matches("[abc]x", "bx"));
        assert!(!matches("[!abc]x", "bx"));
        assert!(matches("[^abc]x", "dx"));
        assert!(matches("[a-c-]", "-"));
        assert!(matches("file[1", "file[1"), "an unclosed class is literal");
        assert!(!matches(&"*a".repeat(20), &"a".repeat(19)));
    }

    #[test]
    fn an_implicit_directory_gets_synthetic_parents() {
        let tar = context(&[
            ("lib/pkg/mod.py", In::File("mod"), 0o644),
            ("lib/pkg/sub/x.py", In::File("x"), 0o640),
            ("lib/top.py", In::File("top"), 0o644),
        ]);
        assert_eq!(
            copy(&tar, &["lib"], Dest::Dir),
            [
                dir("pkg", 0o755),
                file("pkg/mod.py", "mod"),
                dir("pkg/sub", 0o755),
                out("pkg/sub/x.py", 'f', 0o640, "", "x"),
                file("top.py", "top"),
            ]
        );
        assert_eq!(
            copy(&tar, &["l*/p*"], Dest::Dir),
            [
                file("mod.py", "mod"),
                dir("sub", 0o755),
                out("sub/x.py", 'f', 0o640, "", "x"),
            ]
        );
    }

    #[test]
    fn symlinks_are_copied_as_symlinks() {
        let tar = context(&[
            ("conf/", In::Dir, 0o755),
            ("conf/passwd", In::Symlink("/etc/passwd"), 0o777),
            ("conf/up", In::Symlink("../outside"), 0o777),
        ]);
        assert_eq!(
            copy(&tar, &["conf"], Dest::Dir),
            [
                out("passwd", 's', 0o777, "/etc/passwd", ""),
                out("up", 's', 0o777, "../outside", ""),
            ]
        );
        assert_eq!(
            copy(&tar, &["conf/passwd"], Dest::File("pw".into())),
            [out("pw", 's', 0o777, "/etc/passwd", "")]
        );
    }

    #[test]
    fn hard_links_inside_the_copy_are_renamed() {
        let tar = context(&[
            ("app/", In::Dir, 0o755),
            ("app/bin/", In::Dir, 0o755),
            ("app/bin/tool", In::File("tool"), 0o755),
            ("app/tool-link", In::HardLink("./app/bin/tool"), 0o755),
        ]);
        assert_eq!(
            copy(&tar, &["app"], Dest::Dir),
            [
                dir("bin", 0o755),
                out("bin/tool", 'f', 0o755, "", "tool"),
                out("tool-link", 'h', 0o755, "bin/tool", ""),
            ]
        );
        let reason = refused(&tar, &["app/tool-link"], Dest::Dir);
        assert!(reason.contains("hard link app/tool-link"), "{reason}");
    }

    #[test]
    fn missing_sources_and_misused_file_destinations_are_refused() {
        let reason = refused(&sample(), &["a.txt", "missing.txt"], Dest::Dir);
        assert_eq!(
            reason,
            "COPY source missing.txt is not in the build context"
        );
        let reason = refused(&sample(), &["nothing-*"], Dest::Dir);
        assert!(reason.contains("nothing-*"), "{reason}");
        let needs_dir =
            "COPY with more than one source, or a directory, needs a destination ending in /";
        for sources in [&["a.txt", "main.py"][..], &["src"], &["*.txt"], &["."]] {
            let many = context(&[
                ("a.txt", In::File("a"), 0o644),
                ("b.txt", In::File("b"), 0o644),
                ("src/x", In::File("x"), 0o644),
                ("main.py", In::File("m"), 0o644),
            ]);
            assert_eq!(
                refused(&many, sources, Dest::File("b.txt".into())),
                needs_dir,
                "{sources:?}"
            );
        }
        let reason = refused(&sample(), &["../secret"], Dest::Dir);
        assert!(reason.contains("outside the build context"), "{reason}");
    }

    #[test]
    fn a_parent_component_in_the_context_is_refused() {
        let tar = context(&[
            ("a.txt", In::File("a"), 0o644),
            ("x/../../etc/passwd", In::File("evil"), 0o644),
        ]);
        let reason = refused(&tar, &["a.txt"], Dest::Dir);
        assert!(reason.contains("'..'"), "{reason}");
    }

    #[test]
    fn the_digest_follows_content_not_mtimes() {
        let digest = |data: &str, mtime: u64| {
            let tar = context_at(&[
                ("src/", In::Dir, 0o755, mtime),
                ("src/a.txt", In::File(data), 0o644, mtime),
            ]);
            run(&tar, &["src"], Dest::Dir, false)
                .expect("copy")
                .1
                .digest
        };
        let first = digest("one", MTIME);
        assert!(
            first.starts_with("sha256:") && first.len() == 7 + 64,
            "{first}"
        );
        assert_eq!(digest("one", MTIME + 60), first);
        assert_ne!(digest("two", MTIME), first);
        let renamed = run(&sample(), &["a.txt"], Dest::File("b.txt".into()), false)
            .expect("copy")
            .1;
        let kept = run(&sample(), &["a.txt"], Dest::Dir, false)
            .expect("copy")
            .1;
        assert_ne!(renamed.digest, kept.digest, "the name is in the digest");
    }

    fn archive() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut append = |name: &str, entry_type: EntryType, data: &[u8], link: &str| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(entry_type);
            header.set_size(data.len() as u64);
            header.set_mode(0o640);
            header.set_uid(42);
            match entry_type {
                EntryType::Link => builder.append_link(&mut header, name, link),
                _ => builder.append_data(&mut header, name, data),
            }
            .expect("append");
        };
        append("./", EntryType::Directory, b"", "");
        append("pkg/lib/code.py", EntryType::Regular, b"code", "");
        append(
            "pkg/lib/again.py",
            EntryType::Link,
            b"",
            "./pkg/lib/code.py",
        );
        append("readme", EntryType::Regular, b"hi", "");
        builder.into_inner().expect("tar")
    }

    fn add(tar: &[u8], source: &str, dest: Dest) -> Vec<Out> {
        let (entries, copied) = run(tar, &[source], dest, true).expect("add");
        assert_eq!(copied.entries, entries.len() as u64);
        entries
    }

    #[test]
    fn add_unpacks_plain_and_gzip_tars() {
        let unpacked = [
            dir("pkg", 0o755),
            dir("pkg/lib", 0o755),
            out("pkg/lib/code.py", 'f', 0o640, "", "code"),
            out("pkg/lib/again.py", 'h', 0o640, "pkg/lib/code.py", ""),
            out("readme", 'f', 0o640, "", "hi"),
        ];
        for data in [archive(), gzip(&archive())] {
            let tar = context_with_file("dist/bundle.tar", &data);
            assert_eq!(add(&tar, "dist/bundle.tar", Dest::Dir), unpacked);
            let under: Vec<Out> = std::iter::once(dir("into", 0o755))
                .chain(unpacked.iter().map(|entry| Out {
                    name: format!("into/{}", entry.name),
                    link: match entry.kind {
                        'h' => format!("into/{}", entry.link),
                        _ => entry.link.clone(),
                    },
                    data: entry.data.clone(),
                    ..out("", entry.kind, entry.mode, "", "")
                }))
                .collect();
            assert_eq!(add(&tar, "dist/*.tar", Dest::File("into".into())), under);
        }
    }

    #[test]
    fn add_copies_a_file_that_is_no_archive_and_copy_never_unpacks() {
        let plain = context(&[("notes.txt", In::File("just text"), 0o644)]);
        assert_eq!(
            add(&plain, "notes.txt", Dest::Dir),
            [file("notes.txt", "just text")]
        );
        let zipped_text = context_with_file("notes.gz", &gzip(b"just text"));
        let copied = add(&zipped_text, "notes.gz", Dest::Dir);
        assert_eq!(copied.len(), 1);
        assert_eq!(copied[0].kind, 'f');
        let tar = context_with_file("bundle.tar", &archive());
        let (entries, _) = run(&tar, &["bundle.tar"], Dest::Dir, false).expect("copy");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, "bundle.tar");
        assert_eq!(entries[0].data, archive(), "copied byte for byte");
    }

    #[test]
    fn overlapping_sources_write_each_name_once() {
        let (entries, copied) =
            run(&sample(), &["src", "src/run.sh", "a.txt"], Dest::Dir, false).expect("copy");
        let names: Vec<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a.txt",
                "notes.txt",
                "run.sh",
                "tool.py",
                "deep",
                "deep/more.txt"
            ]
        );
        assert_eq!(copied.entries, 6);
    }
}
