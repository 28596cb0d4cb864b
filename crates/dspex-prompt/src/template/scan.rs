//! A small lexical scan of template sources.
//!
//! minijinja 2 does not expose its parser without the `unstable_machinery`
//! feature, which this crate does not enable. The few facts the template
//! module needs beyond `Template::undeclared_variables` — the targets of
//! `extends`/`include`/`import`/`from`, the `default` filters and
//! `is defined` guards applied to plain names, the `{% block %}` ranges and the
//! names bound around an `include` — are found here from the tag structure
//! alone: `{{ … }}` and `{% … %}` tags are located (skipping `{# … #}` comments
//! and `{% raw %}` sections, honouring string literals and nested braces) and
//! their bodies are split into identifier, string, number and punctuation
//! tokens. Nothing here parses expressions, and nothing here can panic: every
//! slice is taken with `get`.

use std::collections::BTreeSet;
use std::ops::Range;

/// Whether a tag prints (`{{ … }}`) or is a statement (`{% … %}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TagKind {
    /// `{{ … }}`.
    Expr,
    /// `{% … %}`.
    Stmt,
}

/// One tag of a template source.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tag<'a> {
    /// Print or statement.
    pub(super) kind: TagKind,
    /// The text between the delimiters, whitespace-control markers removed.
    pub(super) body: &'a str,
    /// Byte offset of the opening delimiter.
    pub(super) start: usize,
    /// Byte offset just past the closing delimiter.
    pub(super) end: usize,
}

/// Finds the tags of `source`, in order.
pub(super) fn tags(source: &str) -> Vec<Tag<'_>> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(rel) = source.get(pos..).and_then(|rest| rest.find('{')) {
        let open = pos + rel;
        let (kind, close) = match bytes.get(open + 1) {
            Some(b'#') => {
                match source.get(open + 2..).and_then(|rest| rest.find("#}")) {
                    Some(r) => pos = open + 2 + r + 2,
                    None => break,
                }
                continue;
            }
            Some(b'{') => (TagKind::Expr, b'}'),
            Some(b'%') => (TagKind::Stmt, b'%'),
            _ => {
                pos = open + 1;
                continue;
            }
        };
        let body_start = open + 2;
        let Some(body_end) = find_close(bytes, body_start, close) else {
            break;
        };
        let end = body_end + 2;
        let body = trim_markers(source.get(body_start..body_end).unwrap_or(""));
        out.push(Tag {
            kind,
            body,
            start: open,
            end,
        });
        pos = end;
        if kind == TagKind::Stmt && first_word(body) == "raw" {
            match find_endraw(source, pos) {
                Some(after) => pos = after,
                None => break,
            }
        }
    }
    out
}

/// The offset of the closing `}}` or `%}` of a tag whose body starts at
/// `from`, skipping string literals and balanced braces.
fn find_close(bytes: &[u8], from: usize, first: u8) -> Option<usize> {
    let mut i = from;
    let mut depth = 0usize;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' | b'\'' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    if c == b'\\' {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if c == b {
                        break;
                    }
                }
                continue;
            }
            b'{' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            _ if b == first && depth == 0 && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Removes the whitespace-control markers (`-`, `+`, `~`) next to the
/// delimiters.
fn trim_markers(body: &str) -> &str {
    let body = body.strip_prefix(['-', '+', '~']).unwrap_or(body);
    body.strip_suffix(['-', '+', '~']).unwrap_or(body)
}

/// The first whitespace-separated word of a tag body.
fn first_word(body: &str) -> &str {
    body.split_whitespace().next().unwrap_or("")
}

/// The offset just past the `{% endraw %}` tag that follows `from`.
fn find_endraw(source: &str, from: usize) -> Option<usize> {
    let bytes = source.as_bytes();
    let mut pos = from;
    loop {
        let open = pos + source.get(pos..)?.find("{%")?;
        let body_end = find_close(bytes, open + 2, b'%')?;
        let body = trim_markers(source.get(open + 2..body_end).unwrap_or(""));
        if body.trim() == "endraw" {
            return Some(body_end + 2);
        }
        pos = open + 2;
    }
}

/// One token of a tag body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tok<'a> {
    /// A name or keyword.
    Ident(&'a str),
    /// A string literal, quotes included.
    Str(&'a str),
    /// A number literal.
    Num(&'a str),
    /// An operator or punctuation (`==`, `!=`, `<=`, `>=`, `//`, `**` are one
    /// token each).
    Punct(&'a str),
}

/// A token and its byte range inside the tag body.
#[derive(Clone, Debug)]
pub(super) struct Token<'a> {
    /// The token.
    pub(super) tok: Tok<'a>,
    /// Byte range in the body.
    pub(super) span: Range<usize>,
}

/// Splits a tag body into tokens.
pub(super) fn tokens(body: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut chars = body.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        let mut end = start + c.len_utf8();
        let tok = if c.is_alphabetic() || c == '_' {
            while let Some(&(i, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = i + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            Tok::Ident(body.get(start..end).unwrap_or(""))
        } else if c.is_ascii_digit() {
            while let Some(&(i, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == '.' {
                    end = i + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            Tok::Num(body.get(start..end).unwrap_or(""))
        } else if c == '"' || c == '\'' {
            let mut escaped = false;
            for (i, d) in chars.by_ref() {
                end = i + d.len_utf8();
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
            Tok::Str(body.get(start..end).unwrap_or(""))
        } else {
            if let Some(&(i, d)) = chars.peek() {
                let pair = matches!(
                    (c, d),
                    ('=' | '!' | '<' | '>', '=') | ('/', '/') | ('*', '*')
                );
                if pair {
                    end = i + d.len_utf8();
                    chars.next();
                }
            }
            Tok::Punct(body.get(start..end).unwrap_or(""))
        };
        out.push(Token {
            tok,
            span: start..end,
        });
    }
    out
}

/// Decodes a string literal token (quotes included) the way minijinja does.
/// `None` for malformed escapes.
pub(super) fn decode_str(raw: &str) -> Option<String> {
    let quote = raw.chars().next()?;
    let inner = raw.strip_prefix(quote)?.strip_suffix(quote)?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            d @ ('"' | '\\' | '/' | '\'') => out.push(d),
            'b' => out.push('\x08'),
            'f' => out.push('\x0C'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16).ok()?;
                out.push(char::from_u32(code)?);
            }
            d => {
                out.push('\\');
                out.push(d);
            }
        }
    }
    Some(out)
}

/// What kind of other template a tag refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefKind {
    /// `{% extends "x" %}`.
    Extends,
    /// `{% include "x" %}` or `{% include ["x", "y"] %}`.
    Include,
    /// `{% import "x" as m %}` or `{% from "x" import m %}`.
    Import,
}

/// A reference to another template by name.
#[derive(Clone, Debug)]
pub(super) struct Reference {
    /// What kind of reference.
    pub(super) kind: RefKind,
    /// The candidate names (the first that exists is used); empty when the
    /// name is computed at render time.
    pub(super) names: Vec<String>,
    /// `ignore missing` was given.
    pub(super) ignore_missing: bool,
    /// Names bound by enclosing `for`, `with`, `set`, `macro` and similar at
    /// the point of the reference (an included template sees them).
    pub(super) bound: BTreeSet<String>,
    /// Byte offset of the tag in the source.
    pub(super) offset: usize,
}

/// How the template supplies a value for a name that may be missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Fallback {
    /// `name | default(expr)`: the source text of `expr`.
    Expr(String),
    /// `name | default` without an argument: the empty string.
    Empty,
    /// `name is defined` / `name is undefined`: the template checks for it.
    Guard,
}

/// A `{% block %}` of a template.
#[derive(Clone, Debug)]
pub(super) struct Block {
    /// The block's name.
    pub(super) name: String,
    /// Byte range of the block's body in the source.
    pub(super) body: Range<usize>,
    /// The body calls `super()`.
    pub(super) uses_super: bool,
}

/// Everything the scan finds in one source.
#[derive(Clone, Debug, Default)]
pub(super) struct Facts {
    /// References to other templates, in source order.
    pub(super) refs: Vec<Reference>,
    /// Fallbacks for plain names, in source order.
    pub(super) fallbacks: Vec<(String, Fallback)>,
    /// Blocks with a closing tag, in order of their opening tag.
    pub(super) blocks: Vec<Block>,
}

impl Facts {
    /// The names of the blocks defined here whose body does not call
    /// `super()`.
    pub(super) fn overriding_blocks(&self) -> impl Iterator<Item = &str> {
        self.blocks
            .iter()
            .filter(|b| !b.uses_super)
            .map(|b| b.name.as_str())
    }

    /// The first `extends` reference.
    pub(super) fn extends(&self) -> Option<&Reference> {
        self.refs.iter().find(|r| r.kind == RefKind::Extends)
    }
}

/// A scope opened by a statement, with the names it binds.
struct Frame {
    end: &'static str,
    names: Vec<String>,
}

/// Scans a template source.
pub(super) fn facts(source: &str) -> Facts {
    let mut facts = Facts::default();
    let mut frames: Vec<Frame> = vec![Frame {
        end: "",
        names: Vec::new(),
    }];
    // Open blocks: (index into facts.blocks is assigned on close), name, body start, super.
    let mut open_blocks: Vec<(String, usize, bool)> = Vec::new();
    for tag in tags(source) {
        let toks = tokens(tag.body);
        scan_fallbacks(tag.body, &toks, &mut facts.fallbacks);
        if let Some(open) = open_blocks.last_mut()
            && calls_super(&toks)
        {
            open.2 = true;
        }
        if tag.kind != TagKind::Stmt {
            continue;
        }
        let keyword = match toks.first() {
            Some(Token {
                tok: Tok::Ident(k), ..
            }) => *k,
            _ => continue,
        };
        let rest = toks.get(1..).unwrap_or(&[]);
        match keyword {
            "extends" | "include" | "import" | "from" => {
                let kind = match keyword {
                    "extends" => RefKind::Extends,
                    "include" => RefKind::Include,
                    _ => RefKind::Import,
                };
                let bound = frames
                    .iter()
                    .flat_map(|f| f.names.iter().cloned())
                    .collect();
                facts.refs.push(Reference {
                    kind,
                    names: literal_names(rest),
                    ignore_missing: has_ignore_missing(rest),
                    bound,
                    offset: tag.start,
                });
                if keyword == "import" || keyword == "from" {
                    bind(&mut frames, import_targets(keyword, rest));
                }
            }
            "block" => {
                let name = match rest.first() {
                    Some(Token {
                        tok: Tok::Ident(n), ..
                    }) => (*n).to_owned(),
                    _ => String::new(),
                };
                open_blocks.push((name, tag.end, false));
                frames.push(Frame {
                    end: "endblock",
                    names: Vec::new(),
                });
            }
            "endblock" => {
                if let Some((name, start, uses_super)) = open_blocks.pop() {
                    facts.blocks.push(Block {
                        name,
                        body: start..tag.start,
                        uses_super,
                    });
                }
                close(&mut frames, "endblock");
            }
            "for" => frames.push(Frame {
                end: "endfor",
                names: for_targets(rest),
            }),
            "with" => frames.push(Frame {
                end: "endwith",
                names: assigned_names(rest),
            }),
            "macro" => {
                let mut iter = rest.iter();
                if let Some(Token {
                    tok: Tok::Ident(name),
                    ..
                }) = iter.next()
                {
                    bind(&mut frames, vec![(*name).to_owned()]);
                }
                frames.push(Frame {
                    end: "endmacro",
                    names: parameter_names(rest.get(1..).unwrap_or(&[])),
                });
            }
            "call" => frames.push(Frame {
                end: "endcall",
                names: parameter_names(rest),
            }),
            "set" => {
                let mut names = assigned_names(rest);
                if names.is_empty() {
                    // Block set: `{% set name %}…{% endset %}`.
                    if let Some(Token {
                        tok: Tok::Ident(name),
                        ..
                    }) = rest.first()
                    {
                        names.push((*name).to_owned());
                    }
                }
                bind(&mut frames, names);
            }
            "endfor" | "endwith" | "endmacro" | "endcall" => {
                let end = match keyword {
                    "endfor" => "endfor",
                    "endwith" => "endwith",
                    "endmacro" => "endmacro",
                    _ => "endcall",
                };
                close(&mut frames, end);
            }
            _ => {}
        }
    }
    facts.blocks.sort_by_key(|b| b.body.start);
    facts
}

/// Adds names to the innermost frame.
fn bind(frames: &mut [Frame], names: Vec<String>) {
    if let Some(frame) = frames.last_mut() {
        frame.names.extend(names);
    }
}

/// Closes the innermost frame opened by the statement `end` closes; stray end
/// tags are ignored. The outermost frame is never closed.
fn close(frames: &mut Vec<Frame>, end: &str) {
    if let Some(pos) = frames.iter().rposition(|f| f.end == end)
        && pos > 0
    {
        frames.truncate(pos);
    }
}

/// Whether the tokens call `super()`.
fn calls_super(toks: &[Token<'_>]) -> bool {
    toks.windows(2).any(|w| {
        matches!(
            w,
            [
                Token {
                    tok: Tok::Ident("super"),
                    ..
                },
                Token {
                    tok: Tok::Punct("("),
                    ..
                }
            ]
        )
    })
}

/// The literal template names after `extends`/`include`/`import`/`from`: a
/// string, or a list of strings. Empty when computed.
fn literal_names(rest: &[Token<'_>]) -> Vec<String> {
    match rest.first().map(|t| t.tok) {
        Some(Tok::Str(raw)) => {
            // `"a" ~ x` is computed, not literal.
            match rest.get(1).map(|t| t.tok) {
                None | Some(Tok::Ident(_)) => decode_str(raw).into_iter().collect(),
                _ => Vec::new(),
            }
        }
        Some(Tok::Punct("[")) => {
            let mut names = Vec::new();
            for token in rest.get(1..).unwrap_or(&[]) {
                match token.tok {
                    Tok::Str(raw) => match decode_str(raw) {
                        Some(name) => names.push(name),
                        None => return Vec::new(),
                    },
                    Tok::Punct(",") => {}
                    Tok::Punct("]") => return names,
                    _ => return Vec::new(),
                }
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// Whether `ignore missing` appears in the statement.
fn has_ignore_missing(rest: &[Token<'_>]) -> bool {
    rest.windows(2).any(|w| {
        matches!(
            w,
            [
                Token {
                    tok: Tok::Ident("ignore"),
                    ..
                },
                Token {
                    tok: Tok::Ident("missing"),
                    ..
                }
            ]
        )
    })
}

/// Names bound by `import "x" as m` or `from "x" import a, b as c`.
fn import_targets(keyword: &str, rest: &[Token<'_>]) -> Vec<String> {
    let idents = rest.iter().filter_map(|t| match t.tok {
        Tok::Ident(name) => Some(name),
        _ => None,
    });
    let words: Vec<&str> = idents.collect();
    let mut out = Vec::new();
    if keyword == "import" {
        if let Some(pos) = words.iter().position(|w| *w == "as") {
            out.extend(words.get(pos + 1).map(|w| (*w).to_owned()));
        }
        return out;
    }
    // from "x" import a, b as c [with context]
    let Some(pos) = words.iter().position(|w| *w == "import") else {
        return out;
    };
    let mut iter = words.get(pos + 1..).unwrap_or(&[]).iter().peekable();
    while let Some(word) = iter.next() {
        if matches!(*word, "with" | "without") {
            break;
        }
        if iter.peek() == Some(&&"as") {
            iter.next();
            if let Some(alias) = iter.next() {
                out.push((*alias).to_owned());
            }
        } else {
            out.push((*word).to_owned());
        }
    }
    out
}

/// The loop variables of a `for` statement (the names before `in`).
fn for_targets(rest: &[Token<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    for token in rest {
        match token.tok {
            Tok::Ident("in") => break,
            Tok::Ident(name) => out.push(name.to_owned()),
            _ => {}
        }
    }
    out
}

/// The names assigned by `set a = …`, `set a, b = …` or `with a = 1, b = 2`:
/// plain names followed by `=` or `,` at bracket depth zero, before the value.
fn assigned_names(rest: &[Token<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut expect_name = true;
    for (i, token) in rest.iter().enumerate() {
        let next = rest.get(i + 1).map(|t| t.tok);
        match token.tok {
            Tok::Punct("(" | "[" | "{") => depth += 1,
            Tok::Punct(")" | "]" | "}") => depth = depth.saturating_sub(1),
            Tok::Punct(",") if depth == 0 => expect_name = true,
            Tok::Ident(name) if depth == 0 && expect_name => {
                if matches!(next, Some(Tok::Punct("=" | ","))) {
                    out.push(name.to_owned());
                }
                if !matches!(next, Some(Tok::Punct(","))) {
                    expect_name = false;
                }
            }
            _ if depth == 0 => expect_name = false,
            _ => {}
        }
    }
    out
}

/// Parameter names of a `macro` signature or `call(…)` block: the names at
/// parenthesis depth one that are followed by `,`, `=` or `)`.
fn parameter_names(rest: &[Token<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut expect_name = false;
    for (i, token) in rest.iter().enumerate() {
        match token.tok {
            Tok::Punct("(") if depth == 0 => {
                depth = 1;
                expect_name = true;
            }
            Tok::Punct("(" | "[" | "{") => depth += 1,
            Tok::Punct(")") if depth == 1 => break,
            Tok::Punct(")" | "]" | "}") => depth = depth.saturating_sub(1),
            Tok::Punct(",") if depth == 1 => expect_name = true,
            Tok::Ident(name) if depth == 1 && expect_name => {
                if matches!(
                    rest.get(i + 1).map(|t| t.tok),
                    Some(Tok::Punct("," | "=" | ")"))
                ) {
                    out.push(name.to_owned());
                }
                expect_name = false;
            }
            _ if depth == 1 => expect_name = false,
            _ => {}
        }
    }
    out
}

/// Finds `name | default(…)`, `name | d(…)`, `name | default` and
/// `name is [not] defined|undefined` where `name` is a plain name (not an
/// attribute, an item or a call).
fn scan_fallbacks(body: &str, toks: &[Token<'_>], out: &mut Vec<(String, Fallback)>) {
    for (i, token) in toks.iter().enumerate() {
        let Tok::Ident(name) = token.tok else {
            continue;
        };
        let prev = i.checked_sub(1).and_then(|p| toks.get(p)).map(|t| t.tok);
        if matches!(prev, Some(Tok::Punct("." | "|")) | Some(Tok::Ident("is"))) {
            continue;
        }
        let at = |offset: usize| toks.get(i + offset).map(|t| t.tok);
        match (at(1), at(2)) {
            (Some(Tok::Punct("|")), Some(Tok::Ident("default" | "d"))) => {
                let fallback = if at(3) == Some(Tok::Punct("(")) {
                    first_argument(body, toks.get(i + 4..).unwrap_or(&[]))
                        .map_or(Fallback::Empty, Fallback::Expr)
                } else {
                    Fallback::Empty
                };
                out.push((name.to_owned(), fallback));
            }
            (Some(Tok::Ident("is")), second) => {
                let test = if second == Some(Tok::Ident("not")) {
                    at(3)
                } else {
                    second
                };
                if matches!(test, Some(Tok::Ident("defined" | "undefined"))) {
                    out.push((name.to_owned(), Fallback::Guard));
                }
            }
            _ => {}
        }
    }
}

/// The source text of the first argument of a call whose opening parenthesis
/// has been consumed; `None` when there is no argument. A keyword argument
/// (`value=…`) yields its value.
fn first_argument(body: &str, toks: &[Token<'_>]) -> Option<String> {
    let mut depth = 0usize;
    let mut end_index = None;
    for (i, token) in toks.iter().enumerate() {
        match token.tok {
            Tok::Punct("(" | "[" | "{") => depth += 1,
            Tok::Punct(")") if depth == 0 => {
                end_index = Some(i);
                break;
            }
            Tok::Punct(",") if depth == 0 => {
                end_index = Some(i);
                break;
            }
            Tok::Punct(")" | "]" | "}") => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let args = toks.get(..end_index?)?;
    let args = match args {
        [
            Token {
                tok: Tok::Ident(_), ..
            },
            Token {
                tok: Tok::Punct("="),
                ..
            },
            value @ ..,
        ] => value,
        _ => args,
    };
    let first = args.first()?;
    let last = args.last()?;
    body.get(first.span.start..last.span.end)
        .map(|s| s.trim().to_owned())
}

/// `source` with the bodies of the named blocks removed (the outermost
/// occurrence of each; blocks nested in a removed body go with it).
pub(super) fn strip_blocks(source: &str, facts: &Facts, names: &BTreeSet<String>) -> String {
    let mut out = String::with_capacity(source.len());
    let mut copied = 0;
    for block in &facts.blocks {
        if !names.contains(&block.name) || block.body.start < copied {
            continue;
        }
        out.push_str(source.get(copied..block.body.start).unwrap_or(""));
        copied = block.body.end;
    }
    out.push_str(source.get(copied..).unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn finds_tags_and_skips_comments_and_raw() {
        let src = "a {# {{ x }} #} {{ y }} {% raw %}{{ z }}{% endraw %} {%- if w -%}";
        let found: Vec<_> = tags(src).iter().map(|t| (t.kind, t.body.trim())).collect();
        assert_eq!(
            found,
            vec![
                (TagKind::Expr, "y"),
                (TagKind::Stmt, "raw"),
                (TagKind::Stmt, "if w"),
            ]
        );
    }

    #[test]
    fn braces_and_strings_inside_tags() {
        let src = "{{ {'a': {'b': 1}} }}{{ \"}}\" }}";
        let found: Vec<_> = tags(src).iter().map(|t| t.body.trim()).collect();
        assert_eq!(found, vec!["{'a': {'b': 1}}", "\"}}\""]);
    }

    #[test]
    fn unterminated_tags_do_not_panic() {
        for src in [
            "{{",
            "{%",
            "{#",
            "{{ 'abc",
            "{% raw %}abc",
            "\u{e9}{{ \u{e9}",
            "{",
        ] {
            let _ = facts(src);
        }
    }

    #[test]
    fn references_and_bound_names() {
        let src = "{% extends 'base' %}{% for item in items %}{% include ['a', \"b\"] %}{% endfor %}\
                   {% include x %}{% include 'c' ignore missing %}{% import 'm' as m %}{% from 'f' import g as h %}";
        let facts = facts(src);
        let refs: Vec<_> = facts
            .refs
            .iter()
            .map(|r| (r.kind, r.names.clone(), r.ignore_missing))
            .collect();
        assert_eq!(
            refs,
            vec![
                (RefKind::Extends, vec!["base".to_owned()], false),
                (
                    RefKind::Include,
                    vec!["a".to_owned(), "b".to_owned()],
                    false
                ),
                (RefKind::Include, vec![], false),
                (RefKind::Include, vec!["c".to_owned()], true),
                (RefKind::Import, vec!["m".to_owned()], false),
                (RefKind::Import, vec!["f".to_owned()], false),
            ]
        );
        assert!(facts.refs[1].bound.contains("item"));
        assert!(!facts.refs[2].bound.contains("item"));
    }

    #[test]
    fn fallbacks() {
        let src = "{{ tone | default(\"neutral\") }}{{ n|default(3) }}{{ a.b | default(1) }}\
                   {{ e | d }}{% if g is not defined %}{% endif %}{{ h | default(i, true) }}";
        let found = facts(src).fallbacks;
        assert_eq!(
            found,
            vec![
                ("tone".to_owned(), Fallback::Expr("\"neutral\"".to_owned())),
                ("n".to_owned(), Fallback::Expr("3".to_owned())),
                ("e".to_owned(), Fallback::Empty),
                ("g".to_owned(), Fallback::Guard),
                ("h".to_owned(), Fallback::Expr("i".to_owned())),
            ]
        );
    }

    #[test]
    fn blocks_and_stripping() {
        let src = "A{% block x %}X{{ super() }}{% endblock %}B{% block y %}Y{% block z %}Z{% endblock %}{% endblock %}";
        let facts = facts(src);
        let names: Vec<_> = facts
            .blocks
            .iter()
            .map(|b| (b.name.as_str(), b.uses_super))
            .collect();
        assert_eq!(names, vec![("x", true), ("y", false), ("z", false)]);
        let stripped = strip_blocks(src, &facts, &["y".to_owned()].into());
        assert_eq!(
            stripped,
            "A{% block x %}X{{ super() }}{% endblock %}B{% block y %}{% endblock %}"
        );
    }

    #[test]
    fn decodes_strings() {
        assert_eq!(decode_str(r#""a\"b\u00e9\n""#).unwrap(), "a\"b\u{e9}\n");
        assert_eq!(decode_str("'x'").unwrap(), "x");
        assert_eq!(decode_str("'x"), None);
    }
}
