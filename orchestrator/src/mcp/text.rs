//! Text for a model's context: output cut to a budget, files paged by
//! lines, exact-string edits. Pure functions, unit-tested here; everything
//! they get comes from inside a sandbox and may be anything (no newlines,
//! invalid UTF-8, NUL bytes, gigabytes).

/// Bytes of one output stream shown inline before it is cut.
pub const INLINE_BYTES: usize = 16 * 1024;
/// How far a cut may move to fall on a line boundary.
const SNAP_BYTES: usize = 512;

/// A cut stream: the start and end shown, and how much was left out.
#[derive(Debug, PartialEq, Eq)]
pub struct Cut<'a> {
    pub head: &'a str,
    pub tail: &'a str,
    pub omitted: usize,
}

/// `None` when `text` fits in `budget` bytes; otherwise its start and end,
/// on character boundaries and, where one is near, on line boundaries. The
/// start gets a quarter of the budget, the end the rest: errors and results
/// are usually at the end.
pub fn cut(text: &str, budget: usize) -> Option<Cut<'_>> {
    if text.len() <= budget {
        return None;
    }
    let head_budget = budget / 4;
    let mut head_end = floor_boundary(text, head_budget);
    if let Some(newline) =
        text[floor_boundary(text, head_end.saturating_sub(SNAP_BYTES))..head_end].rfind('\n')
    {
        head_end = floor_boundary(text, head_end.saturating_sub(SNAP_BYTES)) + newline + 1;
    }
    let mut tail_start = ceil_boundary(text, text.len() - (budget - head_budget));
    let window_end = ceil_boundary(text, (tail_start + SNAP_BYTES).min(text.len()));
    if let Some(newline) = text[tail_start..window_end].find('\n') {
        if tail_start + newline + 1 < text.len() {
            tail_start += newline + 1;
        }
    }
    let tail_start = tail_start.max(head_end);
    Some(Cut {
        head: &text[..head_end],
        tail: &text[tail_start..],
        omitted: tail_start - head_end,
    })
}

fn floor_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

/// Lines in `text` as an editor counts them (a last line without a newline
/// counts).
pub fn line_count(text: &str) -> usize {
    let newlines = text.bytes().filter(|b| *b == b'\n').count();
    if text.is_empty() || text.ends_with('\n') {
        newlines
    } else {
        newlines + 1
    }
}

/// Keeps the first `cap` bytes of a stream (on a character boundary) and
/// counts all of it.
#[derive(Debug, Default)]
pub struct Capture {
    pub kept: String,
    pub total: u64,
    cap: usize,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    pub fn push(&mut self, data: &str) {
        self.total += data.len() as u64;
        let room = self.cap.saturating_sub(self.kept.len());
        if room >= data.len() {
            self.kept.push_str(data);
        } else {
            self.kept.push_str(&data[..floor_boundary(data, room)]);
            // A prefix, not a patchwork: nothing more once cut.
            self.cap = self.kept.len();
        }
    }

    /// Whether bytes were dropped past the cap.
    pub fn overflowed(&self) -> bool {
        self.total > self.kept.len() as u64
    }
}

/// Longest line shown by `read_file`; longer ones are cut with a marker.
pub const MAX_LINE_BYTES: usize = 2000;
/// Bytes looked at for NUL to tell a binary file.
const BINARY_SNIFF_BYTES: usize = 8192;

/// Reads a file's lines `offset..offset+limit` (1-based) from its bytes as
/// they stream in, keeping only those lines (each at most
/// [`MAX_LINE_BYTES`]).
#[derive(Debug)]
pub struct Pager {
    first: usize,
    limit: usize,
    /// The number of the line being read.
    line: usize,
    current: Vec<u8>,
    current_cut: bool,
    /// Bytes of the current line were seen (it counts even without a newline).
    in_line: bool,
    pub lines: Vec<String>,
    /// Bytes follow the last line wanted: the file goes on.
    pub more: bool,
    seen: usize,
    pub binary: bool,
}

impl Pager {
    pub fn new(offset: usize, limit: usize) -> Self {
        Self {
            first: offset.max(1),
            limit,
            line: 1,
            current: Vec::new(),
            current_cut: false,
            in_line: false,
            lines: Vec::new(),
            more: false,
            seen: 0,
            binary: false,
        }
    }

    /// Whether every wanted line has been read (the rest need not be).
    pub fn done(&self) -> bool {
        self.binary || self.lines.len() >= self.limit
    }

    pub fn push(&mut self, mut chunk: &[u8]) {
        if self.seen < BINARY_SNIFF_BYTES {
            let sniff = &chunk[..chunk.len().min(BINARY_SNIFF_BYTES - self.seen)];
            if sniff.contains(&0) {
                self.binary = true;
                return;
            }
        }
        self.seen = self.seen.saturating_add(chunk.len());
        if self.done() {
            self.more |= !chunk.is_empty();
            return;
        }
        while !chunk.is_empty() && !self.done() {
            let (part, rest, ended) = match chunk.iter().position(|b| *b == b'\n') {
                Some(at) => (&chunk[..at], &chunk[at + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            self.in_line |= !part.is_empty();
            if self.line >= self.first {
                let room = MAX_LINE_BYTES.saturating_sub(self.current.len());
                self.current
                    .extend_from_slice(&part[..part.len().min(room)]);
                self.current_cut |= part.len() > room;
            }
            if ended {
                self.end_line();
            }
            chunk = rest;
        }
        self.more |= !chunk.is_empty();
    }

    fn end_line(&mut self) {
        if self.line >= self.first {
            let mut line = String::from_utf8_lossy(&self.current).into_owned();
            line.truncate(line.trim_end_matches('\r').len());
            if self.current_cut {
                line.push_str(" [… line cut]");
            }
            self.lines.push(line);
        }
        self.current.clear();
        self.current_cut = false;
        self.in_line = false;
        self.line += 1;
    }

    /// The end of the file: a last line without a newline counts. Returns
    /// how many lines the file has (meaningful only if not [`Self::done`]
    /// early).
    pub fn finish(&mut self) -> usize {
        if self.in_line && !self.done() {
            self.end_line();
        }
        self.line - 1
    }

    pub fn first(&self) -> usize {
        self.first
    }
}

/// Why an exact-string edit cannot be made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("old_string is empty: give the exact text to replace")]
    EmptyOld,
    #[error("old_string and new_string are the same: nothing would change")]
    Unchanged,
    #[error("old_string was not found in the file (it must match exactly, whitespace and indentation included; read the file again to see its current text)")]
    NotFound,
    #[error("old_string occurs {0} times: add surrounding lines to make it unique, or set replace_all to replace every occurrence")]
    Ambiguous(usize),
}

/// Replaces `old` by `new` in `content`: exactly one occurrence, or all of
/// them with `all`. Returns the new content, how many were replaced and
/// where the first replacement starts.
pub fn replace(
    content: &str,
    old: &str,
    new: &str,
    all: bool,
) -> Result<(String, usize, usize), EditError> {
    if old.is_empty() {
        return Err(EditError::EmptyOld);
    }
    if old == new {
        return Err(EditError::Unchanged);
    }
    let count = content.matches(old).count();
    let first = content.find(old).ok_or(EditError::NotFound)?;
    if count > 1 && !all {
        return Err(EditError::Ambiguous(count));
    }
    Ok((content.replace(old, new), count, first))
}

/// The lines around byte `at` of `content` (`context` before and after the
/// `span` bytes there), numbered as `read_file` numbers them.
pub fn snippet(content: &str, at: usize, span: usize, context: usize) -> String {
    let at = floor_boundary(content, at);
    let end = ceil_boundary(content, at + span);
    let first_line = content[..at].matches('\n').count();
    let last_line = first_line + content[at..end].matches('\n').count();
    let from = first_line.saturating_sub(context);
    let to = last_line + context;
    content
        .split('\n')
        .enumerate()
        .skip(from)
        .take(to - from + 1)
        .map(|(index, line)| numbered(index + 1, line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `     7\tline`: a line as `read_file` shows it.
pub fn numbered(number: usize, line: &str) -> String {
    let line = if line.len() > MAX_LINE_BYTES {
        format!(
            "{} [… line cut]",
            &line[..floor_boundary(line, MAX_LINE_BYTES)]
        )
    } else {
        line.to_owned()
    };
    format!("{number:>6}\t{line}")
}

/// A name from inside a sandbox, safe to show on one line: control
/// characters (a newline in a file name) are escaped.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        format!("{text:?}").into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_not_cut() {
        assert_eq!(cut("hello\n", INLINE_BYTES), None);
        let exact = "x".repeat(INLINE_BYTES);
        assert_eq!(cut(&exact, INLINE_BYTES), None);
    }

    #[test]
    fn long_text_keeps_its_start_and_end_within_the_budget() {
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        let cut = cut(&text, INLINE_BYTES).expect("cut");
        assert!(cut.head.len() + cut.tail.len() <= INLINE_BYTES);
        assert_eq!(cut.head.len() + cut.tail.len() + cut.omitted, text.len());
        assert!(cut.head.starts_with("line 0\n"));
        assert!(cut.head.ends_with('\n'), "the head ends on a line boundary");
        assert!(cut.tail.ends_with("line 99999\n"));
        assert!(cut.tail.starts_with("line "), "the tail starts on a line");
        assert!(cut.tail.len() > cut.head.len(), "the end gets more room");
    }

    #[test]
    fn cuts_fall_on_character_boundaries_without_newlines() {
        let text = "é".repeat(INLINE_BYTES);
        let cut = cut(&text, INLINE_BYTES).expect("cut");
        assert!(cut.head.chars().all(|c| c == 'é'));
        assert!(cut.tail.chars().all(|c| c == 'é'));
        assert_eq!(cut.head.len() + cut.tail.len() + cut.omitted, text.len());
        assert!(cut.head.len() + cut.tail.len() <= INLINE_BYTES);
    }

    #[test]
    fn a_capture_keeps_its_cap_and_counts_the_rest() {
        let mut capture = Capture::new(5);
        capture.push("abc");
        capture.push("déf");
        capture.push("ghi");
        assert_eq!(capture.kept, "abcd");
        assert_eq!(capture.total, 10);
        assert!(capture.overflowed());
    }

    #[test]
    fn lines_are_counted_like_an_editor() {
        assert_eq!(line_count(""), 0);
        assert_eq!(line_count("a"), 1);
        assert_eq!(line_count("a\n"), 1);
        assert_eq!(line_count("a\nb"), 2);
    }

    fn page(bytes: &[u8], chunk: usize, offset: usize, limit: usize) -> (Pager, usize) {
        let mut pager = Pager::new(offset, limit);
        for piece in bytes.chunks(chunk) {
            pager.push(piece);
        }
        let total = pager.finish();
        (pager, total)
    }

    #[test]
    fn pages_are_lines_whatever_the_chunks() {
        let file: String = (1..=10).map(|i| format!("l{i}\r\n")).collect();
        for chunk in [1, 3, 1000] {
            let (pager, _) = page(file.as_bytes(), chunk, 4, 3);
            assert_eq!(pager.lines, ["l4", "l5", "l6"], "chunk {chunk}");
        }
        let (pager, _) = page(file.as_bytes(), 5, 8, 3);
        assert_eq!(pager.lines, ["l8", "l9", "l10"]);
        assert!(!pager.more, "nothing follows the last line");
        let (pager, _) = page(file.as_bytes(), 5, 7, 3);
        assert!(pager.more);
        let (pager, total) = page(file.as_bytes(), 7, 9, 100);
        assert_eq!(pager.lines, ["l9", "l10"]);
        assert_eq!(total, 10);
        let (pager, total) = page(b"a\nb", 1, 1, 100);
        assert_eq!(pager.lines, ["a", "b"]);
        assert_eq!(total, 2);
        let (pager, total) = page(b"a\nb\n", 2, 5, 100);
        assert!(pager.lines.is_empty());
        assert_eq!(total, 2);
        let (_, total) = page(b"a\nb", 2, 5, 100);
        assert_eq!(total, 2, "a last line without a newline counts");
    }

    #[test]
    fn long_lines_and_bad_bytes_are_shown_safely() {
        let mut file = vec![b'x'; MAX_LINE_BYTES * 3];
        file.extend_from_slice(b"\n\xff\xfeok\n");
        let (pager, total) = page(&file, 100, 1, 10);
        assert_eq!(total, 2);
        assert!(pager.lines[0].ends_with("[… line cut]"));
        assert!(pager.lines[0].len() < MAX_LINE_BYTES + 20);
        assert_eq!(pager.lines[1], "\u{fffd}\u{fffd}ok");
        let (pager, _) = page(b"ELF\0\x01", 10, 1, 10);
        assert!(pager.binary);
    }

    #[test]
    fn edits_replace_exactly_one_occurrence_or_all_when_asked() {
        let text = "fn a() {}\nfn b() {}\nfn a2() {}\n";
        assert_eq!(
            replace(text, "fn b()", "fn c()", false),
            Ok(("fn a() {}\nfn c() {}\nfn a2() {}\n".into(), 1, 10))
        );
        assert_eq!(
            replace(text, "fn a", "fn z", false),
            Err(EditError::Ambiguous(2))
        );
        assert_eq!(
            replace(text, "fn a", "fn z", true),
            Ok(("fn z() {}\nfn b() {}\nfn z2() {}\n".into(), 2, 0))
        );
        assert_eq!(replace(text, "fn q", "x", false), Err(EditError::NotFound));
        assert_eq!(replace(text, "", "x", false), Err(EditError::EmptyOld));
        assert_eq!(
            replace(text, "fn a", "fn a", true),
            Err(EditError::Unchanged)
        );
    }

    #[test]
    fn snippets_number_the_lines_around_an_edit() {
        let text = "one\ntwo\nthree\nfour\nfive\n";
        let at = text.find("three").expect("present");
        assert_eq!(
            snippet(text, at, "three".len(), 1),
            "     2\ttwo\n     3\tthree\n     4\tfour"
        );
        assert_eq!(snippet(text, 0, 3, 1), "     1\tone\n     2\ttwo");
    }

    #[test]
    fn names_with_control_characters_are_escaped() {
        assert_eq!(printable("/a b"), "/a b");
        assert_eq!(printable("/a\nb"), "\"/a\\nb\"");
    }
}
