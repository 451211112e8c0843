//! The build context `sbx image build` uploads: the context directory as a
//! tar, written on a blocking thread while it is sent, never held whole.
//!
//! Decisions:
//! - Entries are named relative to the directory (`Dockerfile`,
//!   `src/a.py`; directories with a trailing `/`), with no entry for the
//!   directory itself, in a pre-order walk whose siblings are sorted by the
//!   bytes of their names: the same context always makes the same tar, and
//!   the server's build cache hashes `COPY` sources in the tar's order.
//!   The Python SDK's `images.build` walks the same way.
//! - Regular files, directories and symlinks (as symlinks, never followed:
//!   a file is opened with `O_NOFOLLOW` too); FIFOs, sockets and devices are
//!   left out, and a hard link is sent as a file of its own. Permission
//!   bits and mtimes are kept; owners are 0, without names.
//! - `.dockerignore` takes Docker's simple patterns: one per line, `#`
//!   comments and blank lines skipped, surrounding blanks trimmed, a
//!   leading `/` or `./` dropped. Patterns are anchored at the context's
//!   root (`*.log` is `*.log` at the top; `**/*.log` is at any depth) and
//!   match a path or any of its parents (`node_modules` takes all below
//!   it). `*` and `?` stay within one path component, `[a-z]`, `[!x]` and
//!   `[^x]` are classes, `\` escapes outside classes, and a `**` component
//!   matches any number of components. The last pattern that matches decides, so
//!   `!pattern` takes back what an earlier one left out.
//! - An excluded directory is not walked unless a `!` pattern could bring
//!   something in it back (there is one at all) or the Dockerfile is in it;
//!   a file brought back below an excluded directory goes without its
//!   directory's entry (the server makes it).
//! - The Dockerfile and `.dockerignore` are always sent, as Docker does.
//! - A file read short of the size it had when its header was written
//!   fails the upload rather than sending a corrupt tar; the failure reaches
//!   the server as a broken body, and the caller as [`Upload::failure`].

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::StreamBody;
use hyper::body::Frame;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The name of the ignore file, at the context's root.
pub const DOCKERIGNORE: &str = ".dockerignore";
/// How much of the tar is gathered before it is handed to the upload.
const CHUNK: usize = 256 << 10;
/// How many chunks may wait for the upload.
const IN_FLIGHT: usize = 8;

/// The patterns of a `.dockerignore`.
#[derive(Debug, Default, Clone)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// `false` for a `!pattern`, which takes a path back.
    excludes: bool,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    /// `**`: any number of components, none included.
    AnyComponents,
    Glob(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Char(char),
    /// `?`
    One,
    /// `*`
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Ignore {
    pub fn parse(text: &str) -> Self {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (excludes, pattern) = match line.strip_prefix('!') {
                Some(rest) => (false, rest.trim()),
                None => (true, line),
            };
            let parts: Vec<Part> = pattern
                .split('/')
                .filter(|part| !part.is_empty() && *part != ".")
                .map(|part| match part {
                    "**" => Part::AnyComponents,
                    glob => Part::Glob(tokens(glob)),
                })
                .collect();
            // `/`, `.` or a lone `!` name nothing.
            if !parts.is_empty() {
                patterns.push(Pattern { excludes, parts });
            }
        }
        Self { patterns }
    }

    /// The context's `.dockerignore`; none is no pattern.
    pub fn read(root: &Path) -> io::Result<Self> {
        match std::fs::read(root.join(DOCKERIGNORE)) {
            Ok(text) => Ok(Self::parse(&String::from_utf8_lossy(&text))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err),
        }
    }

    /// Whether `path` (relative to the root) is left out.
    pub fn excludes(&self, path: &Path) -> bool {
        let components: Vec<String> = path
            .iter()
            .map(|part| String::from_utf8_lossy(part.as_bytes()).into_owned())
            .collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // The path itself or any of its parents.
            let matches =
                (1..=components.len()).any(|len| parts_match(&pattern.parts, &components[..len]));
            if matches {
                excluded = pattern.excludes;
            }
        }
        excluded
    }

    /// Whether some `!pattern` could take back a path below an excluded one.
    fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|pattern| !pattern.excludes)
    }
}

fn parts_match(pattern: &[Part], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Part::AnyComponents, rest)) => {
            parts_match(rest, path) || (!path.is_empty() && parts_match(pattern, &path[1..]))
        }
        Some((Part::Glob(glob), rest)) => match path.split_first() {
            Some((first, others)) => {
                let text: Vec<char> = first.chars().collect();
                glob_matches(glob, &text) && parts_match(rest, others)
            }
            None => false,
        },
    }
}

/// One component of a pattern as tokens; a `[` without its `]` is an
/// ordinary character.
fn tokens(glob: &str) -> Vec<Token> {
    let chars: Vec<char> = glob.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        match chars[at] {
            '*' => {
                // `**` inside a component is one `*`.
                if tokens.last() != Some(&Token::Any) {
                    tokens.push(Token::Any);
                }
            }
            '?' => tokens.push(Token::One),
            '\\' if at + 1 < chars.len() => {
                at += 1;
                tokens.push(Token::Char(chars[at]));
            }
            '[' => match class(&chars, at) {
                Some((token, end)) => {
                    tokens.push(token);
                    at = end;
                }
                None => tokens.push(Token::Char('[')),
            },
            c => tokens.push(Token::Char(c)),
        }
        at += 1;
    }
    tokens
}

/// The class that opens at `start`, and where its `]` is. A `]` right
/// after the opening (and its `!` or `^`) is a member; there is no escaping
/// inside a class.
fn class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut at = start + 1;
    let negated = matches!(chars.get(at), Some('!' | '^'));
    if negated {
        at += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let low = *chars.get(at)?;
        if low == ']' && !first {
            return Some((Token::Class { negated, ranges }, at));
        }
        first = false;
        let mut high = low;
        if chars.get(at + 1) == Some(&'-') && chars.get(at + 2).is_some_and(|&end| end != ']') {
            at += 2;
            high = chars[at];
        }
        ranges.push((low, high));
        at += 1;
    }
}

fn glob_matches(glob: &[Token], text: &[char]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((Token::Any, rest)) => (0..=text.len()).any(|skip| glob_matches(rest, &text[skip..])),
        Some((token, rest)) => match text.split_first() {
            Some((&c, others)) => {
                let one = match token {
                    Token::Char(want) => c == *want,
                    Token::One => true,
                    Token::Class { negated, ranges } => {
                        ranges.iter().any(|&(low, high)| low <= c && c <= high) != *negated
                    }
                    Token::Any => unreachable!("matched above"),
                };
                one && glob_matches(rest, others)
            }
            None => false,
        },
    }
}

/// What to send of a context directory.
#[derive(Debug, Clone)]
pub struct Context {
    root: PathBuf,
    ignore: Ignore,
    /// Sent whatever the patterns say: the Dockerfile and `.dockerignore`.
    always: Vec<PathBuf>,
}

impl Context {
    /// `dockerfile` is relative to `root`.
    pub fn new(root: PathBuf, ignore: Ignore, dockerfile: &Path) -> Self {
        Self {
            root,
            ignore,
            always: vec![dockerfile.to_owned(), PathBuf::from(DOCKERIGNORE)],
        }
    }

    /// Writes the context as a tar to `out`, and returns `out`.
    pub fn write_tar<W: Write>(&self, out: W) -> io::Result<W> {
        let mut builder = tar::Builder::new(out);
        self.walk(&mut builder, Path::new(""))?;
        builder.into_inner()
    }

    fn walk<W: Write>(&self, builder: &mut tar::Builder<W>, relative: &Path) -> io::Result<()> {
        let dir = self.root.join(relative);
        let mut names: Vec<OsString> = std::fs::read_dir(&dir)
            .map_err(|err| at_path(&dir, err))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|err| at_path(&dir, err))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = relative.join(&name);
            let full = self.root.join(&path);
            let metadata = std::fs::symlink_metadata(&full).map_err(|err| at_path(&full, err))?;
            let always = self.always.contains(&path);
            let excluded = !always && self.ignore.excludes(&path);
            let kind = metadata.file_type();
            if kind.is_dir() {
                if !excluded {
                    append_dir(builder, &path, &metadata)?;
                }
                let needed = self.always.iter().any(|sent| sent.starts_with(&path));
                if !excluded || self.ignore.has_exceptions() || needed {
                    self.walk(builder, &path)?;
                }
            } else if excluded {
                continue;
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&full).map_err(|err| at_path(&full, err))?;
                let mut header = header(&metadata, tar::EntryType::Symlink);
                builder.append_link(&mut header, &path, target)?;
            } else if kind.is_file() {
                append_file(builder, &path, &full)?;
            }
        }
        Ok(())
    }
}

fn at_path(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

fn header(metadata: &Metadata, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(metadata.mode() & 0o7777);
    header.set_mtime(u64::try_from(metadata.mtime()).unwrap_or(0));
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    metadata: &Metadata,
) -> io::Result<()> {
    let mut header = header(metadata, tar::EntryType::Directory);
    let mut name = path.as_os_str().to_owned();
    name.push("/");
    builder.append_data(&mut header, Path::new(&name), io::empty())
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    full: &Path,
) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(full)
        .map_err(|err| at_path(full, err))?;
    // The size of what was opened, not of what the walk saw.
    let metadata = file.metadata().map_err(|err| at_path(full, err))?;
    let mut header = header(&metadata, tar::EntryType::Regular);
    header.set_size(metadata.len());
    let content = Exactly {
        file: file.take(metadata.len()),
        left: metadata.len(),
        path: full,
    };
    builder.append_data(&mut header, path, content)
}

/// A file's first `left` bytes, failing if it holds fewer.
struct Exactly<'p> {
    file: io::Take<File>,
    left: u64,
    path: &'p Path,
}

impl Read for Exactly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read(buf).map_err(|err| at_path(self.path, err))?;
        if read == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was read", self.path.display()),
            ));
        }
        self.left -= read as u64;
        Ok(read)
    }
}

pub type UploadBody =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, io::Error>>>;

/// A context being sent: the request body, and what went wrong reading it.
#[derive(Debug)]
pub struct Upload {
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl Upload {
    /// Starts writing `context` on a blocking thread; the body carries it,
    /// and ends with an error if the tar could not be written whole.
    pub fn start(context: Context) -> (UploadBody, Self) {
        let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
        let failure = Arc::new(Mutex::new(None));
        let failed = Arc::clone(&failure);
        tokio::task::spawn_blocking(move || {
            let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = ChannelWriter {
                sender: sender.clone(),
                stopped: Arc::clone(&stopped),
            };
            let written = context
                .write_tar(BufWriter::with_capacity(CHUNK, writer))
                .and_then(|mut out| out.flush());
            // When the upload stopped, the server's answer says why.
            if let Err(err) = written {
                if !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    let message = err.to_string();
                    *failed.lock().expect("the failure lock is never poisoned") = Some(err);
                    let _ = sender.blocking_send(Err(io::Error::other(message)));
                }
            }
        });
        let mut receiver = receiver;
        let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
            .map(|chunk| chunk.map(Frame::data))
            .boxed();
        (StreamBody::new(stream), Self { failure })
    }

    /// Why the context could not be read, once that happened.
    pub fn failure(&self) -> Option<io::Error> {
        self.failure
            .lock()
            .expect("the failure lock is never poisoned")
            .take()
    }
}

/// Hands what the tar writer writes to the request body; blocks while the
/// upload is behind, so memory stays bounded.
struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self
            .sender
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .is_err()
        {
            self.stopped
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the upload stopped",
            ));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn ignore(text: &str) -> Ignore {
        Ignore::parse(text)
    }

    fn excluded(ignore: &Ignore, path: &str) -> bool {
        ignore.excludes(Path::new(path))
    }

    #[test]
    fn patterns_match_a_path_or_its_parents_from_the_root() {
        let rules = ignore("# deps\n\n  node_modules  \n*.log\nbuild/\n**/tmp\n/dist\n./out\n");
        for path in [
            "node_modules",
            "node_modules/x/y.js",
            "error.log",
            "build",
            "build/a/b",
            "tmp",
            "src/tmp",
            "src/deep/tmp/file",
            "dist/app.js",
            "out",
        ] {
            assert!(excluded(&rules, path), "{path} is excluded");
        }
        for path in [
            "src/node_modules",
            "src/error.log",
            "error.log.txt",
            "src/build",
            "tmpfile",
            "# deps",
            "src/dist",
        ] {
            assert!(!excluded(&rules, path), "{path} is sent");
        }
    }

    #[test]
    fn globs_stay_within_a_component() {
        let rules = ignore("src/*.py\na?c\n**/*.o\ndocs/**\n[abc]x\n[!a-y]z\n\\*lit\n");
        assert!(excluded(&rules, "src/a.py"));
        assert!(!excluded(&rules, "src/pkg/a.py"));
        assert!(excluded(&rules, "abc"));
        assert!(!excluded(&rules, "ac"));
        assert!(!excluded(&rules, "a/c"));
        assert!(excluded(&rules, "x.o"));
        assert!(excluded(&rules, "a/b/c/x.o"));
        assert!(excluded(&rules, "docs/a/b"));
        assert!(excluded(&rules, "bx"));
        assert!(!excluded(&rules, "dx"));
        assert!(excluded(&rules, "zz"));
        assert!(!excluded(&rules, "az"));
        assert!(excluded(&rules, "*lit"));
        assert!(!excluded(&rules, "xlit"));
        // A `[` without its `]` is itself.
        assert!(excluded(&ignore("a[b"), "a[b"));
        assert!(excluded(&ignore("a**b"), "axyzb"));
        assert!(excluded(&ignore("a/**/b"), "a/b"));
        assert!(excluded(&ignore("a/**/b"), "a/x/y/b/c"));
        assert!(!excluded(&ignore("a/**/b"), "a/x/c"));
    }

    #[test]
    fn the_last_matching_pattern_decides() {
        let rules = ignore("*.md\n!README.md\nlogs\n!logs/keep.txt\n");
        assert!(excluded(&rules, "NOTES.md"));
        assert!(!excluded(&rules, "README.md"));
        assert!(excluded(&rules, "logs"));
        assert!(excluded(&rules, "logs/a.txt"));
        assert!(!excluded(&rules, "logs/keep.txt"));
        let again = ignore("!README.md\n*.md\n");
        assert!(excluded(&again, "README.md"));
        // Blank and `/` or lone `!` lines name nothing.
        assert!(!excluded(&ignore("/\n!\n.\n"), "a"));
    }

    /// `(name, kind, mode, link target or content)` of each entry.
    fn entries(tar: &[u8]) -> Vec<(String, char, u32, String)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .expect("entries")
            .map(|entry| {
                let mut entry = entry.expect("entry");
                let header = entry.header().clone();
                assert_eq!((header.uid().ok(), header.gid().ok()), (Some(0), Some(0)));
                assert_eq!(header.username().ok().flatten(), Some(""));
                let name = entry.path().expect("path").display().to_string();
                let kind = match header.entry_type() {
                    tar::EntryType::Directory => 'd',
                    tar::EntryType::Symlink => 'l',
                    tar::EntryType::Regular => 'f',
                    other => panic!("unexpected entry type {other:?}"),
                };
                let mut detail = String::new();
                if kind == 'l' {
                    let target = entry.link_name().expect("link").expect("target");
                    detail = target.display().to_string();
                } else {
                    entry.read_to_string(&mut detail).expect("content");
                }
                let mode = header.mode().expect("mode");
                (name, kind, mode, detail)
            })
            .collect()
    }

    fn write(root: &Path, path: &str, content: &str, mode: u32) {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(&full, content).expect("write");
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn tar_of(root: &Path, dockerfile: &str) -> Vec<(String, char, u32, String)> {
        let ignore = Ignore::read(root).expect("read .dockerignore");
        let context = Context::new(root.to_owned(), ignore, Path::new(dockerfile));
        entries(&context.write_tar(Vec::new()).expect("tar"))
    }

    #[test]
    fn the_tar_is_sorted_relative_and_keeps_links_and_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "Dockerfile", "FROM base\n", 0o644);
        write(root, "src/run.sh", "#!/bin/sh\n", 0o755);
        write(root, "src/a.py", "a", 0o600);
        write(root, "src-b.txt", "b", 0o644);
        std::fs::set_permissions(root.join("src"), std::fs::Permissions::from_mode(0o750))
            .expect("chmod");
        symlink("/etc/passwd", root.join("link")).expect("symlink");
        symlink("src", root.join("src-link")).expect("symlink");
        std::fs::create_dir(root.join("empty")).expect("mkdir");
        std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let fifo = root.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("c string");
        // SAFETY: `name` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);

        assert_eq!(
            tar_of(root, "Dockerfile"),
            [
                ("Dockerfile".into(), 'f', 0o644, "FROM base\n".into()),
                ("empty/".into(), 'd', 0o755, String::new()),
                ("link".into(), 'l', 0o777, "/etc/passwd".into()),
                ("src/".into(), 'd', 0o750, String::new()),
                ("src/a.py".into(), 'f', 0o600, "a".into()),
                ("src/run.sh".into(), 'f', 0o755, "#!/bin/sh\n".into()),
                ("src-b.txt".into(), 'f', 0o644, "b".into()),
                ("src-link".into(), 'l', 0o777, "src".into()),
            ]
        );
    }

    #[test]
    fn dockerignore_leaves_things_out_but_never_the_dockerfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "docker/build.Dockerfile", "FROM base\n", 0o644);
        write(root, "docker/other", "o", 0o644);
        write(root, "app.txt", "app", 0o644);
        write(root, "secret.txt", "secret", 0o600);
        write(root, "debug.log", "log", 0o644);
        write(root, "node_modules/x/y.js", "y", 0o644);
        write(root, "logs/a.txt", "a", 0o644);
        write(root, "logs/keep.txt", "keep", 0o644);
        write(
            root,
            DOCKERIGNORE,
            "secret.txt\n*.log\nnode_modules\ndocker\nlogs\n!logs/keep.txt\n.dockerignore\n",
            0o644,
        );
        let names: Vec<String> = tar_of(root, "docker/build.Dockerfile")
            .into_iter()
            .map(|(name, ..)| name)
            .collect();
        assert_eq!(
            names,
            [
                DOCKERIGNORE,
                "app.txt",
                "docker/build.Dockerfile",
                "logs/keep.txt",
            ]
        );
    }

    #[tokio::test]
    async fn the_upload_streams_the_tar_and_reports_a_context_it_cannot_read() {
        use http_body_util::BodyExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "Dockerfile", "FROM base\n", 0o644);
        write(root, "big.bin", &"x".repeat(3 * CHUNK + 5), 0o644);
        let context = Context::new(root.to_owned(), Ignore::default(), Path::new("Dockerfile"));
        let (body, upload) = Upload::start(context);
        let tar = BodyExt::collect(body).await.expect("the body").to_bytes();
        assert!(upload.failure().is_none());
        let names: Vec<String> = entries(&tar).into_iter().map(|(name, ..)| name).collect();
        assert_eq!(names, ["Dockerfile", "big.bin"]);

        // A context that cannot be read: the body breaks, and says why.
        let gone = root.join("gone");
        let context = Context::new(gone, Ignore::default(), Path::new("Dockerfile"));
        let (body, upload) = Upload::start(context);
        assert!(
            BodyExt::collect(body).await.is_err(),
            "the body ends in an error"
        );
        let failure = upload.failure().expect("the failure");
        assert!(failure.to_string().contains("gone"), "{failure}");
    }
}
