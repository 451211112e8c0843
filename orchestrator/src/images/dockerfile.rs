//! Dockerfiles, read into the steps sbx's builder runs.
//!
//! sbx builds single-stage images from a Dockerfile, so this reads the part
//! of Docker's syntax such a build needs (FROM, RUN, COPY, ADD, ENV, WORKDIR,
//! USER, ARG, LABEL, CMD, ENTRYPOINT) and refuses the rest by name: a second
//! FROM, `COPY --from`, `RUN --mount`, heredocs, ADD from a URL (a build
//! reaches the network only from RUN steps, under the build's egress
//! allowlist) and the instructions with no effect on a sandbox's root
//! (EXPOSE, VOLUME, HEALTHCHECK...). An error is better than a build that
//! silently does something other than what Docker would.
//!
//! Reading is split in two because variables are not known up front:
//!
//! - [`parse`] does everything the text alone decides: keywords, order
//!   (FROM first, ARG allowed before it), flags, JSON or shell form, word
//!   splitting and the syntax of quotes and `${...}`. A bad Dockerfile fails
//!   here, before any step runs, with the line of the instruction at fault.
//! - [`RawStep::resolve`] expands variables, with the values the engine holds
//!   when it reaches that step (ARGs and ENVs seen so far; ARGs declared
//!   before FROM for FROM itself). Docker expands with the values from
//!   *before* the instruction, so in `ENV A=1 B=$A` B does not see the new A.
//!
//! Expansion follows Docker's word processing: `$NAME`, `${NAME}`,
//! `${NAME:-word}`, `${NAME:+word}` (and the colon-less `-`/`+`, which test
//! "set" rather than "set and non-empty"); single quotes keep text literal,
//! double quotes allow expansion, both are removed; the escape character
//! escapes the next character (in double quotes only `"`, `$` and itself).
//! Words are split on the whitespace written in the Dockerfile, never on
//! whitespace a variable brings in. Shell-form RUN, CMD and ENTRYPOINT are
//! left alone: the shell expands them when the step runs.
//!
//! Where this differs from Docker, on purpose:
//!
//! - continuation lines are joined with a space (Docker joins them with
//!   nothing), so `RUN make \` + `install` never glues two words;
//! - WORKDIR and USER take the rest of the line as one word, as Docker does,
//!   but an empty result is an error rather than a no-op;
//! - COPY/ADD source words that expand to nothing are dropped, so an unset
//!   variable never turns into "the whole build context";
//! - ENV and ARG names may not hold quotes, besides `=` and whitespace.

use std::collections::BTreeMap;

/// The instructions sbx's builder runs.
const SUPPORTED: [&str; 11] = [
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "WORKDIR",
    "USER",
    "ARG",
    "LABEL",
    "CMD",
    "ENTRYPOINT",
];

/// Docker instructions it refuses by name rather than as unknown words.
const UNSUPPORTED: [&str; 7] = [
    "EXPOSE",
    "VOLUME",
    "HEALTHCHECK",
    "ONBUILD",
    "STOPSIGNAL",
    "SHELL",
    "MAINTAINER",
];

const HEREDOC_MESSAGE: &str = "heredocs are not supported";
const ADD_URL_MESSAGE: &str =
    "ADD from a URL is not supported: fetch it in a RUN step (with the build's egress allowlist)";
const UNCLOSED_BRACE_MESSAGE: &str = "a ${ has no closing }";

/// A Dockerfile, parsed: its instructions in order (parser directives and
/// comments gone).
pub fn parse(text: &str) -> Result<Vec<RawStep>, DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (escape, instructions) = logical_lines(text)?;
    let mut steps = Vec::with_capacity(instructions.len());
    let mut seen_from = false;
    for instruction in instructions {
        let step = parse_step(instruction, escape, &mut seen_from)?;
        steps.push(step);
    }
    if !seen_from {
        return Err(DockerfileError {
            line: text.lines().count().max(1),
            message: "no FROM instruction: a Dockerfile must start with FROM".to_string(),
        });
    }
    Ok(steps)
}

/// One instruction, as written; [`RawStep::resolve`] makes it an
/// [`Instruction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStep {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The keyword, upper-case (`RUN`).
    pub keyword: String,
    /// The instruction as written, continuations joined with a space (after
    /// removing the escape+newline), comment lines inside continuations
    /// dropped, trimmed: for display ("Step 3/7: RUN make") and as part of
    /// the build cache key.
    pub text: String,
    /// The escape character in force (`\` or `` ` ``), for expansion.
    escape: char,
    /// The instruction with its words as written: quotes, escapes and `$`
    /// references still in them (commands excepted, which are final).
    unexpanded: Instruction,
}

impl RawStep {
    /// The instruction with variables expanded from `vars` where Docker
    /// expands them.
    pub fn resolve(&self, vars: &BTreeMap<String, String>) -> Result<Instruction, DockerfileError> {
        self.expand(vars).map_err(DockerfileError::at(self.line))
    }

    fn expand(&self, vars: &BTreeMap<String, String>) -> Result<Instruction, String> {
        let word = |raw: &str| expand_word(raw, self.escape, vars);
        let instruction = match &self.unexpanded {
            Instruction::From { image, alias } => Instruction::From {
                image: non_empty("FROM image", word(image)?)?,
                alias: alias.clone(),
            },
            Instruction::Copy(files) => Instruction::Copy(expand_files("COPY", files, &word)?),
            Instruction::Add(files) => {
                let files = expand_files("ADD", files, &word)?;
                reject_urls(&files.sources)?;
                Instruction::Add(files)
            }
            Instruction::Env(pairs) => Instruction::Env(
                pairs
                    .iter()
                    .map(|(name, value)| Ok((name.clone(), word(value)?)))
                    .collect::<Result<_, String>>()?,
            ),
            Instruction::Workdir(dir) => Instruction::Workdir(non_empty("WORKDIR", word(dir)?)?),
            Instruction::User(user) => Instruction::User(non_empty("USER", word(user)?)?),
            Instruction::Arg(args) => Instruction::Arg(
                args.iter()
                    .map(|(name, default)| {
                        Ok((name.clone(), default.as_deref().map(word).transpose()?))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            Instruction::Label(pairs) => Instruction::Label(
                pairs
                    .iter()
                    .map(|(key, value)| Ok((non_empty("LABEL key", word(key)?)?, word(value)?)))
                    .collect::<Result<_, String>>()?,
            ),
            command @ (Instruction::Run(_) | Instruction::Cmd(_) | Instruction::Entrypoint(_)) => {
                command.clone()
            }
        };
        Ok(instruction)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
        alias: Option<String>,
    },
    Run(Command),
    Copy(CopyFiles),
    Add(CopyFiles),
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    /// `ARG a b=c`: each name with its default, if any.
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Cmd(Command),
    Entrypoint(Command),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Shell form: run as `/bin/sh -c TEXT`. TEXT is NOT variable-expanded
    /// (the shell does that).
    Shell(String),
    /// Exec form (`["a", "b"]`): argv as given, not expanded.
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFiles {
    /// Source paths relative to the build context, as written (after
    /// expansion); may hold `*`, `?` and `[...]` patterns.
    pub sources: Vec<String>,
    pub dest: String,
    /// `--chown=user[:group]`, after expansion.
    pub chown: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct DockerfileError {
    pub line: usize,
    pub message: String,
}

impl DockerfileError {
    fn at(line: usize) -> impl Fn(String) -> Self + Copy {
        move |message| Self { line, message }
    }
}

// ---------------------------------------------------------------------------
// Lines

/// An instruction's text with its continuations joined, and where it starts.
struct LogicalLine {
    line: usize,
    text: String,
}

/// The escape character the directives set, and the instructions: blank and
/// comment lines dropped (inside continuations too), continuations joined.
fn logical_lines(text: &str) -> Result<(char, Vec<LogicalLine>), DockerfileError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .peekable();
    let escape = read_directives(&mut lines)?;
    let mut instructions = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (number, line) in lines {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (content, continues) = without_continuation(line, escape);
        current.get_or_insert((number, Vec::new())).1.push(content);
        if !continues {
            instructions.extend(current.take().map(join_parts));
        }
    }
    instructions.extend(current.take().map(join_parts));
    Ok((escape, instructions))
}

fn join_parts((line, parts): (usize, Vec<&str>)) -> LogicalLine {
    LogicalLine {
        line,
        text: parts.join(" ").trim().to_string(),
    }
}

/// The line without a trailing escape character (and the blanks after it),
/// and whether it had one.
fn without_continuation(line: &str, escape: char) -> (&str, bool) {
    match line.trim_end().strip_suffix(escape) {
        Some(content) => (content, true),
        None => (line, false),
    }
}

/// Consumes the parser directives at the top of the file and returns the
/// escape character (`\` unless `# escape=` says otherwise). The first line
/// that is not a known directive ends them, and is left for the caller.
fn read_directives<'a>(
    lines: &mut std::iter::Peekable<impl Iterator<Item = (usize, &'a str)>>,
) -> Result<char, DockerfileError> {
    let mut escape = None;
    while let Some(&(number, line)) = lines.peek() {
        let Some((key, value)) = directive(line) else {
            break;
        };
        match key.as_str() {
            "escape" => {
                let chosen = escape_char(value).map_err(DockerfileError::at(number))?;
                if escape.replace(chosen).is_some() {
                    return Err(DockerfileError {
                        line: number,
                        message: "the escape directive is given twice".to_string(),
                    });
                }
            }
            "syntax" | "check" => {}
            _ => break,
        }
        lines.next();
    }
    Ok(escape.unwrap_or('\\'))
}

/// `# key=value`, with the key lower-cased, if the line has that shape.
fn directive(line: &str) -> Option<(String, &str)> {
    let body = line.trim().strip_prefix('#')?;
    let (key, value) = body.split_once('=')?;
    let key = key.trim();
    let is_word = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric());
    is_word.then(|| (key.to_ascii_lowercase(), value.trim()))
}

fn escape_char(value: &str) -> Result<char, String> {
    match value {
        "\\" => Ok('\\'),
        "`" => Ok('`'),
        _ => Err(format!(
            "escape directive {value:?}: the escape character must be \\ or `"
        )),
    }
}

// ---------------------------------------------------------------------------
// Instructions

fn parse_step(
    instruction: LogicalLine,
    escape: char,
    seen_from: &mut bool,
) -> Result<RawStep, DockerfileError> {
    let at = DockerfileError::at(instruction.line);
    let (word, args) = match instruction.text.split_once(char::is_whitespace) {
        Some((word, args)) => (word, args.trim()),
        None => (instruction.text.as_str(), ""),
    };
    let keyword = check_keyword(word).map_err(at)?;
    check_order(&keyword, seen_from).map_err(at)?;
    let unexpanded = parse_arguments(&keyword, args, escape).map_err(at)?;
    Ok(RawStep {
        line: instruction.line,
        keyword,
        text: instruction.text,
        escape,
        unexpanded,
    })
}

/// The keyword, upper-cased, if sbx's builder runs it.
fn check_keyword(word: &str) -> Result<String, String> {
    let keyword = word.to_ascii_uppercase();
    if SUPPORTED.contains(&keyword.as_str()) {
        Ok(keyword)
    } else if UNSUPPORTED.contains(&keyword.as_str()) {
        Err(format!(
            "{keyword} is not supported by sbx's builder (supported: {})",
            SUPPORTED.join(", ")
        ))
    } else {
        Err(format!("unknown instruction {word}"))
    }
}

/// FROM first (ARGs may precede it), and only once.
fn check_order(keyword: &str, seen_from: &mut bool) -> Result<(), String> {
    match (keyword, *seen_from) {
        ("FROM", true) => Err("multi-stage builds (a second FROM) are not supported".to_string()),
        ("FROM", false) => {
            *seen_from = true;
            Ok(())
        }
        ("ARG", false) | (_, true) => Ok(()),
        (_, false) => Err(format!(
            "{keyword} before FROM: a Dockerfile starts with FROM (only ARG may come before it)"
        )),
    }
}

/// The instruction, with its words still unexpanded.
fn parse_arguments(keyword: &str, args: &str, escape: char) -> Result<Instruction, String> {
    if args.is_empty() {
        return Err(format!("{keyword} has no arguments"));
    }
    let (flags, args) = take_flags(args);
    let chown = check_flags(keyword, &flags, escape)?;
    if args.is_empty() {
        return Err(format!("{keyword} has no arguments besides its flags"));
    }
    match keyword {
        "FROM" => parse_from(args, escape),
        "RUN" => parse_command(keyword, args, escape).map(Instruction::Run),
        "CMD" => parse_command(keyword, args, escape).map(Instruction::Cmd),
        "ENTRYPOINT" => parse_command(keyword, args, escape).map(Instruction::Entrypoint),
        "COPY" => parse_files(keyword, args, chown, escape).map(Instruction::Copy),
        "ADD" => parse_add(args, chown, escape).map(Instruction::Add),
        "ENV" => parse_env(args, escape).map(Instruction::Env),
        "WORKDIR" => checked_word(args, escape).map(Instruction::Workdir),
        "USER" => checked_word(args, escape).map(Instruction::User),
        "ARG" => parse_arg(args, escape).map(Instruction::Arg),
        "LABEL" => parse_label(args, escape).map(Instruction::Label),
        _ => Err(format!("unknown instruction {keyword}")),
    }
}

/// `FROM image [AS name]`.
fn parse_from(args: &str, escape: char) -> Result<Instruction, String> {
    let words = split_words(args, escape)?;
    match words.as_slice() {
        [image] => Ok(Instruction::From {
            image: image.clone(),
            alias: None,
        }),
        [image, as_word, alias] if as_word.eq_ignore_ascii_case("AS") => Ok(Instruction::From {
            image: image.clone(),
            alias: Some(alias.clone()),
        }),
        _ => Err(format!("FROM {args}: expected FROM image [AS name]")),
    }
}

/// RUN, CMD and ENTRYPOINT: exec form if the arguments are a JSON array of
/// strings, shell form (verbatim) otherwise.
fn parse_command(keyword: &str, args: &str, escape: char) -> Result<Command, String> {
    match exec_form(args) {
        Some(argv) if argv.is_empty() && keyword == "RUN" => {
            Err("RUN [] has no command to run".to_string())
        }
        Some(argv) => Ok(Command::Exec(argv)),
        None if keyword == "RUN" && has_heredoc(args, escape) => Err(HEREDOC_MESSAGE.to_string()),
        None => Ok(Command::Shell(args.to_string())),
    }
}

/// ADD is COPY that refuses URLs: those written out here, those that come
/// from variables when the step is resolved.
fn parse_add(args: &str, chown: Option<String>, escape: char) -> Result<CopyFiles, String> {
    let files = parse_files("ADD", args, chown, escape)?;
    let no_vars = BTreeMap::new();
    let sources_as_written = files
        .sources
        .iter()
        .map(|source| expand_word(source, escape, &no_vars))
        .collect::<Result<Vec<_>, _>>()?;
    reject_urls(&sources_as_written)?;
    Ok(files)
}

/// COPY and ADD: sources then destination, as a JSON array or words.
fn parse_files(
    keyword: &str,
    args: &str,
    chown: Option<String>,
    escape: char,
) -> Result<CopyFiles, String> {
    let words = match exec_form(args) {
        Some(list) => list
            .iter()
            .map(|word| checked_word(word, escape))
            .collect::<Result<Vec<_>, _>>()?,
        None if has_heredoc(args, escape) => return Err(HEREDOC_MESSAGE.to_string()),
        None => split_words(args, escape)?,
    };
    match words.split_last() {
        Some((dest, sources)) if !sources.is_empty() => Ok(CopyFiles {
            sources: sources.to_vec(),
            dest: dest.clone(),
            chown,
        }),
        _ => Err(format!(
            "{keyword} needs at least one source and a destination"
        )),
    }
}

/// `ENV a=b c="d e"`, or the legacy `ENV name the rest of the line`.
fn parse_env(args: &str, escape: char) -> Result<Vec<(String, String)>, String> {
    let words = split_words(args, escape)?;
    let legacy = words
        .first()
        .is_some_and(|first| unquoted_equals(first, escape).is_none());
    if legacy {
        let Some((name, value)) = args.split_once(char::is_whitespace) else {
            return Err(format!("ENV {args} has no value: write ENV {args}=value"));
        };
        check_name("ENV", name)?;
        return Ok(vec![(
            name.to_string(),
            checked_word(value.trim_start(), escape)?,
        )]);
    }
    words
        .iter()
        .map(|word| {
            let (name, value) = split_pair(word, escape)
                .ok_or_else(|| format!("ENV {word}: expected name=value"))?;
            check_name("ENV", name)?;
            Ok((name.to_string(), value.to_string()))
        })
        .collect()
}

/// `ARG a b=c`.
fn parse_arg(args: &str, escape: char) -> Result<Vec<(String, Option<String>)>, String> {
    split_words(args, escape)?
        .iter()
        .map(|word| {
            let (name, default) = match split_pair(word, escape) {
                Some((name, default)) => (name, Some(default.to_string())),
                None => (word.as_str(), None),
            };
            check_name("ARG", name)?;
            Ok((name.to_string(), default))
        })
        .collect()
}

/// `LABEL a=b "c d"="e f"`.
fn parse_label(args: &str, escape: char) -> Result<Vec<(String, String)>, String> {
    split_words(args, escape)?
        .iter()
        .map(|word| {
            let (key, value) = split_pair(word, escape)
                .ok_or_else(|| format!("LABEL {word}: expected key=value"))?;
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// ENV and ARG names: used as written, so they must be plain.
fn check_name(keyword: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{keyword} has an empty name"));
    }
    if name.contains(|c: char| c == '=' || c == '"' || c == '\'' || c.is_whitespace()) {
        return Err(format!(
            "{keyword} name {name:?} is not valid: it may not hold =, quotes or whitespace"
        ));
    }
    Ok(())
}

/// A `--name=value` (or bare `--name`) word before an instruction's
/// arguments.
struct Flag<'a> {
    name: &'a str,
    value: Option<&'a str>,
}

/// The flags at the start of `args`, and what follows them (`--` alone ends
/// the flags).
fn take_flags(args: &str) -> (Vec<Flag<'_>>, &str) {
    let mut flags = Vec::new();
    let mut rest = args.trim_start();
    while let Some(unprefixed) = rest.strip_prefix("--") {
        let (body, remaining) = unprefixed
            .split_once(char::is_whitespace)
            .unwrap_or((unprefixed, ""));
        rest = remaining.trim_start();
        if body.is_empty() {
            break;
        }
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        flags.push(Flag { name, value });
    }
    (flags, rest)
}

/// Refuses every flag but `--chown` on COPY and ADD, which it returns.
fn check_flags(keyword: &str, flags: &[Flag<'_>], escape: char) -> Result<Option<String>, String> {
    let mut chown = None;
    for flag in flags {
        match (keyword, flag.name) {
            ("COPY" | "ADD", "chown") => {
                let value = flag
                    .value
                    .filter(|value| !value.is_empty())
                    .ok_or_else(|| {
                        format!("{keyword} --chown needs a value: --chown=user[:group]")
                    })?;
                if chown.replace(checked_word(value, escape)?).is_some() {
                    return Err(format!("{keyword} --chown is given twice"));
                }
            }
            ("COPY", "from") => {
                return Err("COPY --from is not supported (multi-stage builds are not)".to_string())
            }
            _ => return Err(format!("{keyword} --{} is not supported", flag.name)),
        }
    }
    Ok(chown)
}

/// The arguments as a JSON array of strings, if they are one.
fn exec_form(args: &str) -> Option<Vec<String>> {
    if !args.starts_with('[') {
        return None;
    }
    serde_json::from_str(args).ok()
}

/// Whether a word opens a heredoc: `<<EOF`, `<<-EOF`, `<<"EOF"`, `2<<EOF`.
/// Words are split as Docker splits them, so `"a <<b"` is no heredoc; shell
/// text this lexer cannot split (a quote it thinks unclosed) falls back to
/// plain whitespace.
fn has_heredoc(args: &str, escape: char) -> bool {
    let words = split_words(args, escape)
        .unwrap_or_else(|_| args.split_whitespace().map(str::to_string).collect());
    words.iter().any(|word| {
        let word = word.trim_start_matches(|c: char| c.is_ascii_digit());
        let Some(name) = word.strip_prefix("<<") else {
            return false;
        };
        let name = name.strip_prefix('-').unwrap_or(name);
        !name.is_empty() && !name.contains('<')
    })
}

fn reject_urls(sources: &[String]) -> Result<(), String> {
    let is_url = |source: &String| {
        let source = source.to_ascii_lowercase();
        ["http://", "https://", "git://", "git@"]
            .iter()
            .any(|prefix| source.starts_with(prefix))
    };
    if sources.iter().any(is_url) {
        return Err(ADD_URL_MESSAGE.to_string());
    }
    Ok(())
}

fn non_empty(what: &str, value: String) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("{what} is empty after expanding variables"));
    }
    Ok(value)
}

fn expand_files(
    keyword: &str,
    files: &CopyFiles,
    word: &impl Fn(&str) -> Result<String, String>,
) -> Result<CopyFiles, String> {
    let mut sources = Vec::with_capacity(files.sources.len());
    for source in &files.sources {
        let source = word(source)?;
        if !source.is_empty() {
            sources.push(source);
        }
    }
    if sources.is_empty() {
        return Err(format!(
            "{keyword} has no sources after expanding variables"
        ));
    }
    Ok(CopyFiles {
        sources,
        dest: non_empty(&format!("{keyword} destination"), word(&files.dest)?)?,
        chown: files.chown.as_deref().map(word).transpose()?,
    })
}

// ---------------------------------------------------------------------------
// Words

/// `raw` checked for well-formed quotes and `${...}`, and returned as is.
fn checked_word(raw: &str, escape: char) -> Result<String, String> {
    expand_word(raw, escape, &BTreeMap::new())?;
    Ok(raw.to_string())
}

/// `text` split on the whitespace outside quotes and `${...}`, each word as
/// written (checked, not expanded).
fn split_words(text: &str, escape: char) -> Result<Vec<String>, String> {
    let no_vars = BTreeMap::new();
    let mut reader = WordReader::new(text, escape, &no_vars);
    let mut words = Vec::new();
    loop {
        reader.skip_whitespace();
        let start = reader.pos;
        if reader.peek().is_none() {
            return Ok(words);
        }
        reader.word(true, None)?;
        words.push(reader.chars[start..reader.pos].iter().collect());
    }
}

/// One word, expanded: quotes removed, escapes applied, variables replaced.
fn expand_word(raw: &str, escape: char, vars: &BTreeMap<String, String>) -> Result<String, String> {
    WordReader::new(raw, escape, vars).word(false, None)
}

/// The `=` that splits `name=value`, outside quotes and escapes.
fn unquoted_equals(word: &str, escape: char) -> Option<usize> {
    let mut quote = None;
    let mut escaped = false;
    for (index, c) in word.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some(open), c) if c == open => quote = None,
            (Some('\''), _) => {}
            (_, c) if c == escape => escaped = true,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '=') => return Some(index),
            _ => {}
        }
    }
    None
}

fn split_pair(word: &str, escape: char) -> Option<(&str, &str)> {
    let index = unquoted_equals(word, escape)?;
    Some((&word[..index], &word[index + 1..]))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Docker's word processing over one piece of text.
struct WordReader<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: &'a BTreeMap<String, String>,
}

impl<'a> WordReader<'a> {
    fn new(text: &str, escape: char, vars: &'a BTreeMap<String, String>) -> Self {
        Self {
            chars: text.chars().collect(),
            pos: 0,
            escape,
            vars,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// Reads and expands up to the end of the text, or unquoted whitespace
    /// when `stop_at_space`, or past `closing` (an error if it never comes).
    fn word(&mut self, stop_at_space: bool, closing: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return match closing {
                    Some(_) => Err(UNCLOSED_BRACE_MESSAGE.to_string()),
                    None => Ok(out),
                };
            };
            if stop_at_space && c.is_whitespace() {
                return Ok(out);
            }
            self.pos += 1;
            match c {
                c if Some(c) == closing => return Ok(out),
                '\'' => out.push_str(&self.single_quoted()?),
                '"' => out.push_str(&self.double_quoted()?),
                '$' => out.push_str(&self.dollar()?),
                c if c == self.escape => out.extend(self.bump()),
                c => out.push(c),
            }
        }
    }

    /// After an opening `'`: everything literal up to the closing one.
    fn single_quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err("a single quote is not closed".to_string()),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    /// After an opening `"`: expansions apply; the escape character escapes
    /// only `"`, `$` and itself, and is kept before anything else.
    fn double_quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err("a double quote is not closed".to_string()),
                Some('"') => return Ok(out),
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) if c == self.escape => match self.peek() {
                    Some(next) if next == '"' || next == '$' || next == self.escape => {
                        self.pos += 1;
                        out.push(next);
                    }
                    _ => out.push(c),
                },
                Some(c) => out.push(c),
            }
        }
    }

    /// After a `$`: a variable's value, or `$` itself when no name follows.
    fn dollar(&mut self) -> Result<String, String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced()
            }
            Some(c) if is_name_char(c) => {
                let name = self.name();
                Ok(self.value(&name).unwrap_or_default().to_string())
            }
            _ => Ok("$".to_string()),
        }
    }

    /// After `${`: `NAME}`, `NAME:-word}`, `NAME:+word}`, `NAME-word}` or
    /// `NAME+word}`.
    fn braced(&mut self) -> Result<String, String> {
        let name = self.name();
        let Some(next) = self.bump() else {
            return Err(UNCLOSED_BRACE_MESSAGE.to_string());
        };
        if name.is_empty() {
            return Err("bad substitution: ${ must be followed by a variable name".to_string());
        }
        let value = self.value(&name);
        match next {
            '}' => Ok(value.unwrap_or_default().to_string()),
            ':' => match self.bump() {
                Some(operator @ ('-' | '+')) => self.modified(value, operator, true),
                Some(other) => Err(unsupported_substitution(&name, &format!(":{other}"))),
                None => Err(UNCLOSED_BRACE_MESSAGE.to_string()),
            },
            operator @ ('-' | '+') => self.modified(value, operator, false),
            other => Err(unsupported_substitution(&name, &other.to_string())),
        }
    }

    /// `-word}` (the word when unset) or `+word}` (the word when set);
    /// with `colon`, empty counts as unset.
    fn modified(
        &mut self,
        value: Option<&str>,
        operator: char,
        colon: bool,
    ) -> Result<String, String> {
        let word = self.word(false, Some('}'))?;
        let set = value.is_some_and(|value| !(colon && value.is_empty()));
        Ok(match (operator, set) {
            ('-', true) => value.unwrap_or_default().to_string(),
            ('-', false) | ('+', true) => word,
            _ => String::new(),
        })
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|&c| is_name_char(c)) {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn value(&self, name: &str) -> Option<&'a str> {
        self.vars.get(name).map(String::as_str)
    }
}

fn unsupported_substitution(name: &str, modifier: &str) -> String {
    format!(
        "${{{name}{modifier}...}} is not supported \
         (supported: ${{{name}}}, ${{{name}:-word}}, ${{{name}:+word}})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error(text: &str) -> DockerfileError {
        parse(text).expect_err("the Dockerfile should be refused")
    }

    /// The one step of `FROM base` followed by `instruction`, resolved.
    fn resolve_one(instruction: &str, with: &[(&str, &str)]) -> Instruction {
        let steps = parse(&format!("FROM base\n{instruction}\n")).expect("parses");
        steps[1].resolve(&vars(with)).expect("resolves")
    }

    fn resolve_error(instruction: &str, with: &[(&str, &str)]) -> DockerfileError {
        let steps = parse(&format!("FROM base\n{instruction}\n")).expect("parses");
        steps[1]
            .resolve(&vars(with))
            .expect_err("should not resolve")
    }

    fn shell(text: &str) -> Command {
        Command::Shell(text.to_string())
    }

    fn exec(argv: &[&str]) -> Command {
        Command::Exec(argv.iter().map(|arg| arg.to_string()).collect())
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_supported_instruction_parses_and_resolves() {
        let text = "\
# syntax=docker/dockerfile:1
ARG BASE=ubuntu
from ${BASE}:${TAG:-22.04} AS build
RUN apt-get update && echo $HOME
COPY --chown=${OWNER}:staff src/*.rs lib/ /app/
ADD vendor.tar.gz /opt/
ENV PATH=/app/bin:$PATH MODE=\"fast build\"
WORKDIR $DIR/work
USER ${OWNER}
ARG VERSION COMMIT=${TAG}
LABEL org.version=$VERSION \"human name\"='sbx image'
CMD [\"serve\", \"--port\", \"80\"]
ENTRYPOINT /entry.sh $ARGS
";
        let steps = parse(text).expect("parses");
        let keywords: Vec<_> = steps.iter().map(|step| step.keyword.as_str()).collect();
        assert_eq!(
            keywords,
            [
                "ARG",
                "FROM",
                "RUN",
                "COPY",
                "ADD",
                "ENV",
                "WORKDIR",
                "USER",
                "ARG",
                "LABEL",
                "CMD",
                "ENTRYPOINT"
            ]
        );
        assert_eq!(steps[1].line, 3);
        assert_eq!(steps[1].text, "from ${BASE}:${TAG:-22.04} AS build");
        let vars = vars(&[
            ("BASE", "debian"),
            ("OWNER", "app"),
            ("PATH", "/usr/bin"),
            ("DIR", "/srv"),
            ("VERSION", "1.2"),
            ("TAG", "12"),
        ]);
        let resolved: Vec<_> = steps
            .iter()
            .map(|step| step.resolve(&vars).expect("resolves"))
            .collect();
        let expected = [
            Instruction::Arg(vec![("BASE".to_string(), Some("ubuntu".to_string()))]),
            Instruction::From {
                image: "debian:12".to_string(),
                alias: Some("build".to_string()),
            },
            Instruction::Run(shell("apt-get update && echo $HOME")),
            Instruction::Copy(CopyFiles {
                sources: strings(&["src/*.rs", "lib/"]),
                dest: "/app/".to_string(),
                chown: Some("app:staff".to_string()),
            }),
            Instruction::Add(CopyFiles {
                sources: strings(&["vendor.tar.gz"]),
                dest: "/opt/".to_string(),
                chown: None,
            }),
            Instruction::Env(pairs(&[
                ("PATH", "/app/bin:/usr/bin"),
                ("MODE", "fast build"),
            ])),
            Instruction::Workdir("/srv/work".to_string()),
            Instruction::User("app".to_string()),
            Instruction::Arg(vec![
                ("VERSION".to_string(), None),
                ("COMMIT".to_string(), Some("12".to_string())),
            ]),
            Instruction::Label(pairs(&[
                ("org.version", "1.2"),
                ("human name", "sbx image"),
            ])),
            Instruction::Cmd(exec(&["serve", "--port", "80"])),
            Instruction::Entrypoint(shell("/entry.sh $ARGS")),
        ];
        assert_eq!(resolved, expected);
    }

    #[test]
    fn continuations_join_with_a_space_and_drop_comment_lines() {
        let text = "FROM base\n\nRUN apt-get update && \\  \n  # a comment inside\n\n    \
                    apt-get install -y curl\nUSER app\n";
        let steps = parse(text).expect("parses");
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1].line, 3);
        assert_eq!(
            steps[1].text,
            "RUN apt-get update &&      apt-get install -y curl"
        );
        assert_eq!(
            steps[1].resolve(&BTreeMap::new()),
            Ok(Instruction::Run(shell(
                "apt-get update &&      apt-get install -y curl"
            )))
        );
        assert_eq!(steps[2].line, 7);
    }

    #[test]
    fn a_continuation_at_the_end_of_the_file_ends_the_instruction() {
        let steps = parse("FROM base\nRUN make \\").expect("parses");
        assert_eq!(steps[1].text, "RUN make");
    }

    #[test]
    fn the_backtick_escape_directive_keeps_backslashes_literal() {
        let text =
            "# escape=`\nFROM windows\nRUN dir c:\\\nCOPY c:\\src\\app.exe `\n     c:\\app\\\n";
        let steps = parse(text).expect("parses");
        assert_eq!(steps.len(), 3);
        assert_eq!(
            steps[1].resolve(&BTreeMap::new()),
            Ok(Instruction::Run(shell("dir c:\\")))
        );
        assert_eq!(steps[2].line, 4);
        assert_eq!(
            steps[2].resolve(&BTreeMap::new()),
            Ok(Instruction::Copy(CopyFiles {
                sources: strings(&["c:\\src\\app.exe"]),
                dest: "c:\\app\\".to_string(),
                chown: None,
            }))
        );
    }

    #[test]
    fn the_backtick_escapes_dollar_when_it_is_the_escape_character() {
        let steps = parse("# escape=`\nFROM base\nENV A=`$HOME B=\\$HOME\n").expect("parses");
        assert_eq!(
            steps[1].resolve(&vars(&[("HOME", "/root")])),
            Ok(Instruction::Env(pairs(&[("A", "$HOME"), ("B", "\\/root")])))
        );
    }

    #[test]
    fn directives_count_only_before_anything_else() {
        let steps =
            parse("# a comment\n# escape=`\nFROM base\nRUN echo a \\\n b\n").expect("parses");
        assert_eq!(steps[1].text, "RUN echo a   b");
        let steps = parse("\n# escape=`\nFROM base\n").expect("parses");
        assert_eq!(steps.len(), 1);
    }

    #[test]
    fn a_bad_or_repeated_escape_directive_is_refused() {
        assert_eq!(error("# escape=x\nFROM base\n").line, 1);
        assert_eq!(error("# escape=`\n# ESCAPE=\\\nFROM base\n").line, 2);
    }

    #[test]
    fn run_cmd_and_entrypoint_take_shell_or_exec_form() {
        assert_eq!(
            resolve_one("RUN echo \"$A\" 'b'", &[("A", "x")]),
            Instruction::Run(shell("echo \"$A\" 'b'"))
        );
        assert_eq!(
            resolve_one("RUN [\"echo\", \"$A\"]", &[("A", "x")]),
            Instruction::Run(exec(&["echo", "$A"]))
        );
        assert_eq!(
            resolve_one("CMD python app.py", &[]),
            Instruction::Cmd(shell("python app.py"))
        );
        assert_eq!(
            resolve_one("cmd [\"python\", \"app.py\"]", &[]),
            Instruction::Cmd(exec(&["python", "app.py"]))
        );
        assert_eq!(resolve_one("CMD []", &[]), Instruction::Cmd(exec(&[])));
        assert_eq!(
            resolve_one("ENTRYPOINT [\"/bin/tini\", \"--\"]", &[]),
            Instruction::Entrypoint(exec(&["/bin/tini", "--"]))
        );
        assert_eq!(
            resolve_one("ENTRYPOINT exec top -b", &[]),
            Instruction::Entrypoint(shell("exec top -b"))
        );
        // Not an array of strings: shell form, as Docker does.
        assert_eq!(
            resolve_one("RUN [\"a\", 1]", &[]),
            Instruction::Run(shell("[\"a\", 1]"))
        );
    }

    #[test]
    fn run_with_an_empty_exec_form_is_refused() {
        let err = error("FROM base\nRUN []\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("RUN []"), "{err}");
    }

    #[test]
    fn copy_takes_a_json_array_with_the_destination_last() {
        assert_eq!(
            resolve_one(
                "COPY --chown=app [\"my file.txt\", \"$SRC\", \"/dest dir/\"]",
                &[("SRC", "b")]
            ),
            Instruction::Copy(CopyFiles {
                sources: strings(&["my file.txt", "b"]),
                dest: "/dest dir/".to_string(),
                chown: Some("app".to_string()),
            })
        );
    }

    #[test]
    fn copy_words_keep_quoted_spaces_and_variables_do_not_split() {
        assert_eq!(
            resolve_one(
                "COPY \"a b\" c\\ d $FILES ${NONE} /dst",
                &[("FILES", "x y")]
            ),
            Instruction::Copy(CopyFiles {
                sources: strings(&["a b", "c d", "x y"]),
                dest: "/dst".to_string(),
                chown: None,
            })
        );
    }

    #[test]
    fn chown_is_expanded() {
        let copy = resolve_one(
            "COPY --chown=${USER_ID:-1000}:$GROUP a /b",
            &[("GROUP", "staff")],
        );
        let Instruction::Copy(files) = copy else {
            panic!("not a COPY: {copy:?}");
        };
        assert_eq!(files.chown.as_deref(), Some("1000:staff"));
        let add = resolve_one("ADD --chown=\"$U\" a /b", &[("U", "root")]);
        let Instruction::Add(files) = add else {
            panic!("not an ADD: {add:?}");
        };
        assert_eq!(files.chown.as_deref(), Some("root"));
    }

    #[test]
    fn copy_needs_a_source_and_a_destination() {
        assert!(error("FROM base\nCOPY onlyone\n")
            .message
            .contains("source and a destination"));
        assert!(error("FROM base\nCOPY [\"onlyone\"]\n")
            .message
            .contains("source and a destination"));
        assert_eq!(error("FROM base\nCOPY --chown=a\n").line, 2);
        assert!(error("FROM base\nCOPY --chown a b\n")
            .message
            .contains("--chown needs a value"));
    }

    #[test]
    fn sources_that_expand_to_nothing_are_refused() {
        let err = resolve_error("COPY $NONE /dst", &[]);
        assert!(err.message.contains("no sources"), "{err}");
        let err = resolve_error("COPY a $NONE", &[]);
        assert!(err.message.contains("destination is empty"), "{err}");
    }

    #[test]
    fn env_takes_pairs_with_quotes() {
        assert_eq!(
            resolve_one(
                "ENV A=1 B=\"two words\" C='$A literal' D=x\\ y E=\"q\\\"uote\" F=\"a=b\"",
                &[("A", "old")]
            ),
            Instruction::Env(pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "$A literal"),
                ("D", "x y"),
                ("E", "q\"uote"),
                ("F", "a=b"),
            ]))
        );
    }

    #[test]
    fn env_legacy_form_takes_the_rest_of_the_line() {
        assert_eq!(
            resolve_one(
                "ENV GREETING hello   $WHO \"quoted part\"",
                &[("WHO", "world")]
            ),
            Instruction::Env(pairs(&[("GREETING", "hello   world quoted part")]))
        );
        assert!(error("FROM base\nENV LONELY\n")
            .message
            .contains("no value"));
    }

    #[test]
    fn env_and_arg_names_are_checked() {
        assert!(error("FROM base\nENV =x\n").message.contains("empty name"));
        assert!(error("FROM base\nENV A=1 B\n")
            .message
            .contains("expected name=value"));
        assert!(error("FROM base\nENV \"A B\"=1\n")
            .message
            .contains("not valid"));
        assert!(error("FROM base\nARG =x\n").message.contains("empty name"));
        assert!(error("FROM base\nLABEL novalue\n")
            .message
            .contains("expected key=value"));
    }

    #[test]
    fn arg_takes_names_with_optional_defaults() {
        assert_eq!(
            resolve_one("ARG A B=\"x y\" C=${B}z", &[("B", "b")]),
            Instruction::Arg(vec![
                ("A".to_string(), None),
                ("B".to_string(), Some("x y".to_string())),
                ("C".to_string(), Some("bz".to_string())),
            ])
        );
    }

    #[test]
    fn workdir_and_user_are_one_expanded_word() {
        assert_eq!(
            resolve_one("WORKDIR \"$HOME/my dir\"", &[("HOME", "/root")]),
            Instruction::Workdir("/root/my dir".to_string())
        );
        assert_eq!(
            resolve_one("WORKDIR relative/dir", &[]),
            Instruction::Workdir("relative/dir".to_string())
        );
        assert_eq!(
            resolve_one("USER ${U}:${G:-users}", &[("U", "app")]),
            Instruction::User("app:users".to_string())
        );
        let err = resolve_error("WORKDIR $NONE", &[]);
        assert_eq!(err.line, 2);
        assert!(err.message.contains("WORKDIR is empty"), "{err}");
    }

    #[test]
    fn expansion_modifiers_escapes_and_quotes() {
        let with = [("SET", "v"), ("EMPTY", "")];
        let cases = [
            ("${SET:-d}", "v"),
            ("${UNSET:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${UNSET-d}", "d"),
            ("${SET:+a}", "a"),
            ("${EMPTY:+a}", ""),
            ("${UNSET:+a}", ""),
            ("${EMPTY+a}", "a"),
            ("${UNSET:-${SET}x}", "vx"),
            ("${UNSET:-\"a b\"}", "a b"),
            ("\\$SET", "$SET"),
            ("\\${SET}", "${SET}"),
            ("'$SET ${SET}'", "$SET ${SET}"),
            ("\"$SET ${SET}\"", "v v"),
            ("\"\\$SET\"", "$SET"),
            ("\"a\\b\"", "a\\b"),
            ("a\\b", "ab"),
            ("$SET$SET", "vv"),
            ("$SET-x", "v-x"),
            ("cost$", "cost$"),
            ("$/x", "$/x"),
            ("$UNSET.txt", ".txt"),
        ];
        for (written, expanded) in cases {
            assert_eq!(
                resolve_one(&format!("WORKDIR /{written}"), &with),
                Instruction::Workdir(format!("/{expanded}")),
                "{written}"
            );
        }
    }

    #[test]
    fn a_brace_left_open_is_refused_at_parse_time() {
        let err = error("FROM base\nENV A=1\nWORKDIR /${HOME\n");
        assert_eq!(err.line, 3);
        assert!(err.message.contains("no closing }"), "{err}");
        assert!(error("FROM base\nCOPY ${A:-x /b\n")
            .message
            .contains("no closing }"));
        assert!(error("FROM base\nENV A=\"open\n")
            .message
            .contains("double quote"));
        assert!(error("FROM base\nWORKDIR ${A:?x}\n")
            .message
            .contains("not supported"));
    }

    #[test]
    fn an_unsupported_instruction_is_named_with_its_line() {
        let err = error("FROM base\nRUN make\n\nHEALTHCHECK CMD curl localhost\n");
        assert_eq!(err.line, 4);
        assert_eq!(
            err.to_string(),
            "Dockerfile line 4: HEALTHCHECK is not supported by sbx's builder \
             (supported: FROM, RUN, COPY, ADD, ENV, WORKDIR, USER, ARG, LABEL, CMD, ENTRYPOINT)"
        );
        assert!(error("FROM base\nexpose 80\n")
            .message
            .starts_with("EXPOSE is not supported"));
    }

    #[test]
    fn an_unknown_instruction_is_refused() {
        let err = error("FROM base\nRUN a \\\n  b\nFOO bar\n");
        assert_eq!(
            err,
            DockerfileError {
                line: 4,
                message: "unknown instruction FOO".to_string()
            }
        );
    }

    #[test]
    fn a_second_from_is_refused() {
        let err = error("FROM golang AS build\nRUN go build\nFROM alpine\n");
        assert_eq!(err.line, 3);
        assert_eq!(
            err.message,
            "multi-stage builds (a second FROM) are not supported"
        );
    }

    #[test]
    fn only_arg_may_come_before_from() {
        let steps = parse("ARG V=1\nFROM base:$V\n").expect("parses");
        assert_eq!(
            steps[1].resolve(&vars(&[("V", "1")])),
            Ok(Instruction::From {
                image: "base:1".to_string(),
                alias: None
            })
        );
        let err = error("# comment\nRUN make\nFROM base\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("RUN before FROM"), "{err}");
        assert!(error("ARG V\n").message.contains("no FROM"));
        assert!(error("").message.contains("no FROM"));
    }

    #[test]
    fn from_with_an_empty_image_is_refused() {
        let steps = parse("FROM $BASE\n").expect("parses");
        assert!(steps[0].resolve(&BTreeMap::new()).is_err());
        assert!(error("FROM a b\n").message.contains("expected FROM image"));
    }

    #[test]
    fn flags_other_than_chown_are_refused() {
        let cases = [
            (
                "COPY --from=build /a /b",
                "COPY --from is not supported (multi-stage builds are not)",
            ),
            ("COPY --chmod=755 a /b", "COPY --chmod is not supported"),
            (
                "ADD --checksum=sha256:abc a /b",
                "ADD --checksum is not supported",
            ),
            (
                "RUN --mount=type=cache,target=/root/.cache make",
                "RUN --mount is not supported",
            ),
            ("COPY --link a /b", "COPY --link is not supported"),
        ];
        for (instruction, message) in cases {
            let err = error(&format!("FROM base\n{instruction}\n"));
            assert_eq!(
                err,
                DockerfileError {
                    line: 2,
                    message: message.to_string()
                }
            );
        }
        let err = error("FROM --platform=linux/amd64 base\n");
        assert_eq!(err.message, "FROM --platform is not supported");
        assert!(error("FROM base\nCOPY --chown=a --chown=b x /y\n")
            .message
            .contains("twice"));
    }

    #[test]
    fn heredocs_are_refused() {
        for instruction in [
            "RUN <<EOF",
            "RUN cat <<-'EOF' > /x",
            "COPY <<EOF /etc/x",
            "RUN python3 2<<END",
        ] {
            let err = error(&format!("FROM base\n{instruction}\necho hi\nEOF\n"));
            assert_eq!(
                err,
                DockerfileError {
                    line: 2,
                    message: HEREDOC_MESSAGE.to_string()
                }
            );
        }
        // A here-string is not a heredoc, nor is `<<` inside quotes.
        for instruction in [
            "RUN cat <<< hi",
            "RUN echo \"a <<EOF\"",
            "RUN echo $((1<<2))",
        ] {
            assert!(
                parse(&format!("FROM base\n{instruction}\n")).is_ok(),
                "{instruction}"
            );
        }
    }

    #[test]
    fn add_from_a_url_is_refused() {
        for source in [
            "https://example.com/a.tgz",
            "http://x/y",
            "git@github.com:o/r.git",
            "\"HTTPS://x\"",
        ] {
            let err = error(&format!("FROM base\nADD {source} /opt/\n"));
            assert_eq!(
                err,
                DockerfileError {
                    line: 2,
                    message: ADD_URL_MESSAGE.to_string()
                }
            );
        }
        let err = resolve_error("ADD $URL /opt/", &[("URL", "https://example.com/x")]);
        assert_eq!(err.message, ADD_URL_MESSAGE);
        assert!(parse("FROM base\nCOPY https://x /y\n").is_ok());
    }

    #[test]
    fn an_instruction_without_arguments_is_refused() {
        let err = error("FROM base\nRUN\n");
        assert_eq!(
            err,
            DockerfileError {
                line: 2,
                message: "RUN has no arguments".to_string()
            }
        );
        assert_eq!(
            error("FROM base\nWORKDIR   \n").message,
            "WORKDIR has no arguments"
        );
        assert_eq!(error("FROM\n").line, 1);
    }

    #[test]
    fn label_keys_and_values_are_expanded() {
        assert_eq!(
            resolve_one(
                "LABEL \"$NS.key\"=\"$V\" plain=a\\ b",
                &[("NS", "org"), ("V", "1")]
            ),
            Instruction::Label(pairs(&[("org.key", "1"), ("plain", "a b")]))
        );
    }

    #[test]
    fn windows_line_endings_and_a_bom_are_accepted() {
        let steps = parse("\u{feff}FROM base\r\nRUN a \\\r\n  b\r\n").expect("parses");
        assert_eq!(steps[1].text, "RUN a    b");
    }
}
