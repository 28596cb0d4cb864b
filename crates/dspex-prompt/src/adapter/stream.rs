//! Output fields read from a reply while it streams in: for each output field,
//! its text delta by delta, as the model writes it.
//!
//! A [`FieldStream`] is fed the reply's pieces with [`FieldStream::push`] and
//! told the end with [`FieldStream::finish`]. It keeps the whole reply
//! ([`FieldStream::reply`]): typed values still come from the normal
//! [`Adapter::parse`](super::Adapter::parse) of the complete reply, while the
//! deltas are for showing progress. Each push costs O(its length), amortised:
//! no rescan of the reply, no per-byte allocation.
//!
//! **Chat format** (`[[ ## field ## ]]` sections). Markers are recognised
//! exactly as the full parser recognises them (missing spaces or `#`s, names
//! compared ignoring ASCII case), however a marker is split across pushes: a
//! trailing piece that could still become a marker is held back, and released
//! as text as soon as it cannot.
//! - Text after a field's marker belongs to that field up to the next marker.
//!   Text before the first marker and after an unknown marker is not emitted;
//!   after `[[ ## completed ## ]]` nothing is.
//! - Whitespace at either end of a section is not emitted (trailing whitespace
//!   is held back until non-whitespace follows), so **the concatenation of a
//!   field's deltas is exactly the trimmed section text the full parser reads**
//!   (before it strips code fences and coerces).
//! - A field whose marker appears again: only its first section is streamed and
//!   later ones are skipped like unknown markers, as the parser also reads the
//!   first.
//! - Not streamed, because they need the whole reply: the parser's repairs for
//!   a lone output written without markers or a reply in JSON, and sections
//!   after the completed marker (normally cut off by the stop sequence).
//!
//! **JSON format** (one object). Anything before the first `{` is skipped
//! (prose, a code fence). The top-level object is read incrementally: a key
//! naming a field (exactly or ignoring ASCII case) streams its value. A string
//! value streams its decoded characters (every JSON escape, `\uXXXX` and
//! surrogate pairs, split anywhere; a broken escape becomes U+FFFD or is kept
//! as written), so the deltas concatenate to the string `serde_json` decodes.
//! Any other value streams its raw JSON text as it arrives. Unknown keys'
//! values are skipped; the stream completes when the top-level object closes.
//! Each field streams the first key that names it; the full parse may choose
//! another when keys repeat (`serde_json` keeps the last, and an exact-case
//! key wins over an earlier case-insensitive one). Python-style single quotes
//! are read as quotes, without a guarantee: the full parse repairs them.
//!
//! Fields may come in any order; each delta names its field's index.
//!
//! ```
//! use dspex_prompt::adapter::{Adapter, FieldStream};
//! use dspex_prompt::signature::{Field, FieldType};
//!
//! let fields = vec![
//!     Field::new("reasoning", FieldType::Str),
//!     Field::new("answer", FieldType::Int),
//! ];
//! let mut stream = FieldStream::new(Adapter::Chat, fields);
//! let mut deltas = Vec::new();
//! for piece in ["[[ ## reas", "oning ## ]]\nSix times", " seven.\n\n[[ #", "# answer ## ]]\n4", "2\n\n[[ ## completed ## ]]"] {
//!     stream.push(piece, &mut deltas);
//! }
//! stream.finish(&mut deltas);
//! let text = |field| deltas.iter().filter(|d| d.field == field).map(|d| d.text.as_str()).collect::<String>();
//! assert_eq!(text(0), "Six times seven.");
//! assert_eq!(text(1), "42");
//! assert!(stream.completed());
//! ```

use memchr::{memchr, memchr2};

use super::Adapter;
use crate::signature::Field;

/// What a broken `\u` escape or a lone surrogate decodes to.
const REPLACEMENT: char = '\u{FFFD}';

/// The parser's limit on a marker's name.
const MAX_NAME: usize = 64;

/// A piece of one output field's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDelta {
    /// The field's index in the fields given to [`FieldStream::new`].
    pub field: usize,
    /// New text of the field.
    pub text: String,
}

/// Reads output fields from a reply as it streams in.
///
/// Chat format: a field's deltas concatenate to exactly the trimmed text of
/// its first `[[ ## field ## ]]` section, as the full parser reads it,
/// however the reply is split; text outside field sections and after
/// `[[ ## completed ## ]]` is not emitted. JSON format: a field's deltas are
/// its value in the top-level object, decoded for a string, raw JSON text
/// otherwise.
#[derive(Debug)]
pub struct FieldStream {
    fields: Vec<Field>,
    reply: String,
    /// Fields whose section (chat) or key (JSON) has begun: a repeat of it is
    /// not streamed.
    seen: Vec<bool>,
    reader: Reader,
}

#[derive(Debug)]
enum Reader {
    Chat(Chat),
    Json(Json),
}

impl FieldStream {
    /// A reader of `fields` in `adapter`'s format.
    pub fn new(adapter: Adapter, fields: Vec<Field>) -> Self {
        let reader = match adapter {
            Adapter::Chat => Reader::Chat(Chat::default()),
            Adapter::Json => Reader::Json(Json::default()),
        };
        Self {
            seen: vec![false; fields.len()],
            fields,
            reply: String::with_capacity(1024),
            reader,
        }
    }

    /// Feeds the next piece of the reply, appending the field text it
    /// completes to `out`: zero or more deltas, at most one per field (a
    /// field's text within one push comes merged).
    pub fn push(&mut self, delta: &str, out: &mut Vec<FieldDelta>) {
        let from = self.reply.len();
        self.reply.push_str(delta);
        let mut sink = Sink {
            base: out.len(),
            out,
        };
        match &mut self.reader {
            Reader::Chat(chat) => {
                chat.read(&self.reply, from, &self.fields, &mut self.seen, &mut sink);
            }
            Reader::Json(json) => {
                json.read(&self.reply, from, &self.fields, &mut self.seen, &mut sink);
            }
        }
    }

    /// Ends the reply: flushes text held back in case it became a marker
    /// (chat), minus trailing whitespace. An escape cut off by the end of a
    /// JSON reply is dropped. Calling it again emits nothing new.
    pub fn finish(&mut self, out: &mut Vec<FieldDelta>) {
        let mut sink = Sink {
            base: out.len(),
            out,
        };
        if let Reader::Chat(chat) = &mut self.reader {
            chat.finish(&self.reply, &mut sink);
        }
    }

    /// The whole reply pushed so far, for the full parse at the end.
    pub fn reply(&self) -> &str {
        &self.reply
    }

    /// The index of the field being streamed now, if any.
    pub fn current_field(&self) -> Option<usize> {
        match &self.reader {
            Reader::Chat(chat) => match chat.section {
                Section::Field(i) => Some(i),
                _ => None,
            },
            Reader::Json(json) => match json.place {
                Place::Text(_) | Place::Scalar | Place::Nested { .. } => json.target,
                _ => None,
            },
        }
    }

    /// Whether the reply is complete: the chat format's completed marker was
    /// seen, or the JSON format's top-level object closed. Nothing is emitted
    /// after.
    pub fn completed(&self) -> bool {
        match &self.reader {
            Reader::Chat(chat) => chat.section == Section::Completed,
            Reader::Json(json) => json.place == Place::Done,
        }
    }
}

/// Where deltas go; merges a field's text within one push.
struct Sink<'a> {
    out: &'a mut Vec<FieldDelta>,
    /// `out`'s length when the push began: earlier deltas are the caller's.
    base: usize,
}

impl Sink<'_> {
    fn emit(&mut self, field: usize, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.out.len() > self.base
            && let Some(last) = self.out.last_mut()
            && last.field == field
        {
            last.text.push_str(text);
            return;
        }
        self.out.push(FieldDelta {
            field,
            text: text.to_owned(),
        });
    }

    fn emit_char(&mut self, field: usize, c: char) {
        let mut buf = [0; 4];
        self.emit(field, c.encode_utf8(&mut buf));
    }
}

// ---------------------------------------------------------------- chat

/// The section the chat reader is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Section {
    /// Before any marker.
    #[default]
    Preamble,
    Field(usize),
    /// After an unknown marker, or a repeat of a field's.
    Unknown,
    Completed,
}

/// How far into a marker's inside (`[[` .. `]]`) the reader is. The parser
/// takes `inner.trim().trim_matches('#').trim()` as the name, which accepts
/// exactly: space, `#`s, space, name, space, `#`s, space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Lead,
    Hashes,
    Gap,
    Name,
    Trail,
    TrailHashes,
    TrailGap,
    /// The first `]` of the closing pair.
    Close,
}

/// Whether `c` keeps a marker's inside valid, and the state after it.
fn step(inner: Inner, c: char) -> Option<Inner> {
    use Inner::{Close, Gap, Hashes, Lead, Name, Trail, TrailGap, TrailHashes};
    let space = c.is_whitespace();
    let hash = c == '#';
    let name = c.is_ascii_alphanumeric() || c == '_';
    match inner {
        Lead if space => Some(Lead),
        Lead | Hashes if hash => Some(Hashes),
        Hashes | Gap if space => Some(Gap),
        Lead | Hashes | Gap | Name if name => Some(Name),
        Name | Trail if space => Some(Trail),
        Name | Trail | TrailHashes if hash => Some(TrailHashes),
        TrailHashes | TrailGap if space => Some(TrailGap),
        Name | Trail | TrailHashes | TrailGap if c == ']' => Some(Close),
        _ => None,
    }
}

/// What the chat reader holds back at the end of the reply read so far.
#[derive(Clone, Copy, Debug, Default)]
enum Scan {
    #[default]
    Text,
    /// A `[` at this offset, which a second `[` would make a marker's start.
    Bracket(usize),
    /// A possible marker from `start`; `name` is its name's range so far.
    Marker {
        start: usize,
        inner: Inner,
        name: (usize, usize),
    },
}

#[derive(Debug, Default)]
struct Chat {
    section: Section,
    scan: Scan,
    /// Still in the section's leading whitespace.
    lead: bool,
    /// Start of the section's text not yet emitted.
    emit_from: usize,
    /// End of its settled text without trailing whitespace: what may be
    /// emitted.
    kept_to: usize,
}

impl Chat {
    fn read(
        &mut self,
        reply: &str,
        mut at: usize,
        fields: &[Field],
        seen: &mut [bool],
        sink: &mut Sink<'_>,
    ) {
        let bytes = reply.as_bytes();
        let end = reply.len();
        while at < end && self.section != Section::Completed {
            match self.scan {
                Scan::Text => {
                    let rest = bytes.get(at..end).unwrap_or_default();
                    if let Some(i) = memchr(b'[', rest) {
                        self.settle(reply, at, at + i);
                        self.scan = Scan::Bracket(at + i);
                        at += i + 1;
                    } else {
                        self.settle(reply, at, end);
                        at = end;
                    }
                }
                Scan::Bracket(open) => {
                    if bytes.get(at) == Some(&b'[') {
                        self.scan = Scan::Marker {
                            start: open,
                            inner: Inner::Lead,
                            name: (at + 1, at + 1),
                        };
                        at += 1;
                    } else {
                        // Not a marker: the `[` is text, and this byte is read
                        // afresh.
                        self.settle(reply, open, open + 1);
                        self.scan = Scan::Text;
                    }
                }
                Scan::Marker {
                    start,
                    inner,
                    mut name,
                } => {
                    let Some(c) = reply.get(at..).and_then(|rest| rest.chars().next()) else {
                        break;
                    };
                    if inner == Inner::Close && c == ']' {
                        at += 1;
                        self.scan = Scan::Text;
                        let name = reply.get(name.0..name.1).unwrap_or_default();
                        self.marker(reply, at, name, fields, seen, sink);
                        continue;
                    }
                    let next = step(inner, c);
                    if next == Some(Inner::Name) {
                        if inner != Inner::Name {
                            name.0 = at;
                        }
                        // Name characters are ASCII: one byte each.
                        name.1 = at + 1;
                    }
                    match next {
                        Some(inner) if name.1.saturating_sub(name.0) <= MAX_NAME => {
                            self.scan = Scan::Marker { start, inner, name };
                            at += c.len_utf8();
                        }
                        _ => {
                            // The parser would resume its search two bytes
                            // after `start`; nothing up to here can open a
                            // marker (a marker's inside has no `[`), so this
                            // character is read afresh as text.
                            self.settle(reply, start, at);
                            self.scan = Scan::Text;
                        }
                    }
                }
            }
        }
        self.flush(reply, sink);
    }

    /// `reply[start..end]` is known to be text of the current section.
    fn settle(&mut self, reply: &str, start: usize, end: usize) {
        if !matches!(self.section, Section::Field(_)) || start >= end {
            return;
        }
        let Some(mut text) = reply.get(start..end) else {
            return;
        };
        let mut from = start;
        if self.lead {
            text = text.trim_start();
            from = end - text.len();
            if text.is_empty() {
                self.emit_from = end;
                self.kept_to = end;
                return;
            }
            self.emit_from = from;
            self.lead = false;
        }
        let kept = text.trim_end();
        if !kept.is_empty() {
            self.kept_to = from + kept.len();
        }
    }

    fn flush(&mut self, reply: &str, sink: &mut Sink<'_>) {
        if let Section::Field(field) = self.section
            && self.kept_to > self.emit_from
        {
            sink.emit(
                field,
                reply.get(self.emit_from..self.kept_to).unwrap_or_default(),
            );
            self.emit_from = self.kept_to;
        }
    }

    /// A marker named `name` ended at `end`.
    fn marker(
        &mut self,
        reply: &str,
        end: usize,
        name: &str,
        fields: &[Field],
        seen: &mut [bool],
        sink: &mut Sink<'_>,
    ) {
        self.flush(reply, sink);
        self.section = match fields
            .iter()
            .position(|f| f.name.eq_ignore_ascii_case(name))
        {
            Some(i) => match seen.get_mut(i) {
                Some(seen) if !*seen => {
                    *seen = true;
                    Section::Field(i)
                }
                _ => Section::Unknown,
            },
            None if name.eq_ignore_ascii_case("completed") => Section::Completed,
            None => Section::Unknown,
        };
        self.lead = true;
        self.emit_from = end;
        self.kept_to = end;
    }

    fn finish(&mut self, reply: &str, sink: &mut Sink<'_>) {
        // A `[` or a marker cut off by the end is text, as for the parser.
        if let Scan::Bracket(start) | Scan::Marker { start, .. } = self.scan {
            self.settle(reply, start, reply.len());
        }
        self.scan = Scan::Text;
        self.flush(reply, sink);
    }
}

// ---------------------------------------------------------------- JSON

/// Where a JSON string's decoding is within an escape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    None,
    /// After `\`, with a high surrogate waiting for its low half.
    Backslash(Option<u16>),
    /// In `\uXXXX`: `digits` read so far make `code`.
    Hex {
        high: Option<u16>,
        digits: u8,
        code: u16,
    },
    /// After a high surrogate's escape: a low one should follow.
    High(u16),
}

/// A string being read: its quote and escape state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Str {
    quote: u8,
    escape: Escape,
}

impl Str {
    fn new(quote: u8) -> Self {
        Self {
            quote,
            escape: Escape::None,
        }
    }

    /// Decodes the string from `at`, passing its text to `put`: where reading
    /// stopped and whether the closing quote was reached.
    fn decode(
        &mut self,
        reply: &str,
        mut at: usize,
        put: &mut impl FnMut(Piece<'_>),
    ) -> (usize, bool) {
        let bytes = reply.as_bytes();
        let end = reply.len();
        while let Some(&b) = bytes.get(at) {
            match self.escape {
                Escape::None => {
                    let rest = bytes.get(at..end).unwrap_or_default();
                    let Some(i) = memchr2(self.quote, b'\\', rest) else {
                        put(Piece::Text(reply.get(at..end).unwrap_or_default()));
                        return (end, false);
                    };
                    if i > 0 {
                        put(Piece::Text(reply.get(at..at + i).unwrap_or_default()));
                    }
                    at += i + 1;
                    if rest.get(i) == Some(&b'\\') {
                        self.escape = Escape::Backslash(None);
                    } else {
                        return (at, true);
                    }
                }
                Escape::Backslash(high) => {
                    if high.is_some() {
                        if b == b'u' {
                            self.escape = Escape::Hex {
                                high,
                                digits: 0,
                                code: 0,
                            };
                            at += 1;
                            continue;
                        }
                        put(Piece::Char(REPLACEMENT));
                    }
                    let c = match b {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'\'' => '\'',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.escape = Escape::Hex {
                                high: None,
                                digits: 0,
                                code: 0,
                            };
                            at += 1;
                            continue;
                        }
                        _ => {
                            // Not an escape: keep it as written; the byte is
                            // read afresh (it may start a multi-byte char).
                            put(Piece::Char('\\'));
                            self.escape = Escape::None;
                            continue;
                        }
                    };
                    put(Piece::Char(c));
                    self.escape = Escape::None;
                    at += 1;
                }
                Escape::Hex { high, digits, code } => {
                    let Some(digit) = char::from(b).to_digit(16) else {
                        if high.is_some() {
                            put(Piece::Char(REPLACEMENT));
                        }
                        put(Piece::Char(REPLACEMENT));
                        self.escape = Escape::None;
                        continue;
                    };
                    at += 1;
                    let code = (code << 4) | digit as u16;
                    if digits < 3 {
                        self.escape = Escape::Hex {
                            high,
                            digits: digits + 1,
                            code,
                        };
                        continue;
                    }
                    self.escape = Escape::None;
                    if let Some(high) = high {
                        if (0xDC00..=0xDFFF).contains(&code) {
                            let scalar = 0x10000
                                + ((u32::from(high) - 0xD800) << 10)
                                + (u32::from(code) - 0xDC00);
                            put(Piece::Char(char::from_u32(scalar).unwrap_or(REPLACEMENT)));
                            continue;
                        }
                        put(Piece::Char(REPLACEMENT));
                    }
                    match code {
                        0xD800..=0xDBFF => self.escape = Escape::High(code),
                        _ => put(Piece::Char(
                            char::from_u32(code.into()).unwrap_or(REPLACEMENT),
                        )),
                    }
                }
                Escape::High(high) => {
                    if b == b'\\' {
                        self.escape = Escape::Backslash(Some(high));
                        at += 1;
                    } else {
                        put(Piece::Char(REPLACEMENT));
                        self.escape = Escape::None;
                    }
                }
            }
        }
        (at, false)
    }
}

/// Decoded string text: a slice of the reply or an escape's character.
enum Piece<'a> {
    Text(&'a str),
    Char(char),
}

/// Where the JSON reader is in the reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Place {
    /// Before the top-level object.
    #[default]
    Before,
    /// In the top-level object, between members.
    Key,
    KeyText(Str),
    Colon,
    Value,
    /// A string value.
    Text(Str),
    /// A number, `true`, `false`, `null` (or a bare word).
    Scalar,
    /// An array or object value.
    Nested {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// The top-level object closed.
    Done,
}

#[derive(Debug, Default)]
struct Json {
    place: Place,
    /// The field the current key names.
    target: Option<usize>,
    /// The current key, decoded.
    key: String,
}

impl Json {
    fn read(
        &mut self,
        reply: &str,
        mut at: usize,
        fields: &[Field],
        seen: &mut [bool],
        sink: &mut Sink<'_>,
    ) {
        let bytes = reply.as_bytes();
        let end = reply.len();
        while let Some(&b) = bytes.get(at) {
            match self.place {
                Place::Before => match memchr(b'{', bytes.get(at..end).unwrap_or_default()) {
                    Some(i) => {
                        at += i + 1;
                        self.place = Place::Key;
                    }
                    None => at = end,
                },
                Place::Key => {
                    at += 1;
                    // Lenient: a missing comma still starts a key, and stray
                    // bytes are skipped.
                    match b {
                        b'"' | b'\'' => {
                            self.key.clear();
                            self.place = Place::KeyText(Str::new(b));
                        }
                        b'}' => self.place = Place::Done,
                        _ => {}
                    }
                }
                Place::KeyText(mut text) => {
                    let key = &mut self.key;
                    let (next, closed) = text.decode(reply, at, &mut |piece| match piece {
                        Piece::Text(t) => key.push_str(t),
                        Piece::Char(c) => key.push(c),
                    });
                    at = next;
                    self.place = if closed {
                        self.target =
                            fields.iter().position(|f| f.name == self.key).or_else(|| {
                                fields
                                    .iter()
                                    .position(|f| f.name.eq_ignore_ascii_case(&self.key))
                            });
                        Place::Colon
                    } else {
                        Place::KeyText(text)
                    };
                }
                Place::Colon => {
                    at += 1;
                    match b {
                        b':' => self.place = Place::Value,
                        b',' => self.place = Place::Key,
                        b'}' => self.place = Place::Done,
                        _ => {}
                    }
                }
                Place::Value => match b {
                    b' ' | b'\t' | b'\n' | b'\r' => at += 1,
                    b'"' | b'\'' => {
                        at += 1;
                        self.claim(seen);
                        self.place = Place::Text(Str::new(b));
                    }
                    b'{' | b'[' => {
                        self.claim(seen);
                        self.place = Place::Nested {
                            depth: 0,
                            in_string: false,
                            escaped: false,
                        };
                    }
                    b'}' => {
                        at += 1;
                        self.place = Place::Done;
                    }
                    b',' => {
                        at += 1;
                        self.place = Place::Key;
                    }
                    _ => {
                        self.claim(seen);
                        self.place = Place::Scalar;
                    }
                },
                Place::Text(mut text) => {
                    let target = self.target;
                    let (next, closed) = text.decode(reply, at, &mut |piece| {
                        if let Some(field) = target {
                            match piece {
                                Piece::Text(t) => sink.emit(field, t),
                                Piece::Char(c) => sink.emit_char(field, c),
                            }
                        }
                    });
                    at = next;
                    self.place = if closed {
                        self.target = None;
                        Place::Key
                    } else {
                        Place::Text(text)
                    };
                }
                Place::Scalar => {
                    let rest = bytes.get(at..end).unwrap_or_default();
                    let stop = rest.iter().position(|c| {
                        matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']')
                    });
                    let stop_at = stop.map_or(end, |i| at + i);
                    if let Some(field) = self.target {
                        sink.emit(field, reply.get(at..stop_at).unwrap_or_default());
                    }
                    at = stop_at;
                    if stop.is_some() {
                        // The terminator is read again between members.
                        self.target = None;
                        self.place = Place::Key;
                    }
                }
                Place::Nested {
                    mut depth,
                    mut in_string,
                    mut escaped,
                } => {
                    let rest = bytes.get(at..end).unwrap_or_default();
                    let mut stop = None;
                    for (i, &c) in rest.iter().enumerate() {
                        if in_string {
                            if escaped {
                                escaped = false;
                            } else if c == b'\\' {
                                escaped = true;
                            } else if c == b'"' {
                                in_string = false;
                            }
                            continue;
                        }
                        match c {
                            b'"' => in_string = true,
                            b'{' | b'[' => depth = depth.saturating_add(1),
                            b'}' | b']' => {
                                depth = depth.saturating_sub(1);
                                if depth == 0 {
                                    stop = Some(i + 1);
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    let stop_at = stop.map_or(end, |i| at + i);
                    if let Some(field) = self.target {
                        sink.emit(field, reply.get(at..stop_at).unwrap_or_default());
                    }
                    at = stop_at;
                    self.place = if stop.is_some() {
                        self.target = None;
                        Place::Key
                    } else {
                        Place::Nested {
                            depth,
                            in_string,
                            escaped,
                        }
                    };
                }
                Place::Done => break,
            }
        }
    }

    /// A value starts: it streams if its key names a field not streamed yet.
    fn claim(&mut self, seen: &mut [bool]) {
        if let Some(i) = self.target {
            match seen.get_mut(i) {
                Some(seen) if !*seen => *seen = true,
                _ => self.target = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::super::strip_fences;
    use super::*;
    use crate::signature::FieldType;

    fn fields(names: &[&str]) -> Vec<Field> {
        names
            .iter()
            .map(|n| Field::new(*n, FieldType::Str))
            .collect()
    }

    /// Per-field concatenated deltas, whether it completed, and the deltas.
    fn run(
        adapter: Adapter,
        names: &[&str],
        pieces: &[&str],
    ) -> (Vec<String>, bool, Vec<FieldDelta>) {
        let mut stream = FieldStream::new(adapter, fields(names));
        let mut out = Vec::new();
        for piece in pieces {
            stream.push(piece, &mut out);
        }
        stream.finish(&mut out);
        assert_eq!(stream.reply(), pieces.concat());
        let mut texts = vec![String::new(); names.len()];
        for delta in &out {
            assert!(!delta.text.is_empty());
            texts[delta.field].push_str(&delta.text);
        }
        (texts, stream.completed(), out)
    }

    fn whole(adapter: Adapter, names: &[&str], reply: &str) -> Vec<String> {
        run(adapter, names, &[reply]).0
    }

    /// `reply` cut at every pair of char boundaries into three pieces.
    fn every_split(reply: &str, mut check: impl FnMut(&[&str])) {
        let bounds: Vec<usize> = (0..=reply.len())
            .filter(|&i| reply.is_char_boundary(i))
            .collect();
        for (n, &i) in bounds.iter().enumerate() {
            for &j in &bounds[n..] {
                check(&[&reply[..i], &reply[i..j], &reply[j..]]);
            }
        }
        let chars: Vec<String> = reply.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        check(&chars);
    }

    #[test]
    fn chat_marker_split_at_every_position() {
        let reply = "Sure.\n[[ ## reasoning ## ]]\nStep one [x].\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]\nignored";
        every_split(reply, |pieces| {
            let (texts, completed, _) = run(Adapter::Chat, &["reasoning", "answer"], pieces);
            assert_eq!(texts, ["Step one [x].", "42"], "{pieces:?}");
            assert!(completed);
        });
    }

    #[test]
    fn chat_tolerant_markers() {
        let names = ["reasoning", "answer"];
        for reply in [
            "[[##reasoning##]]because[[##answer##]]42",
            "[[ # Reasoning # ]] because [[ANSWER]] 42",
            "[[ ##reasoning ##]]\tbecause\n[[##\u{a0}answer ##]]\n42\n",
            "[[ ## reasoning ##]] because [[ ## answer ## ]]]42",
        ] {
            let want = if reply.ends_with("]]]42") {
                ["because", "]42"]
            } else {
                ["because", "42"]
            };
            every_split(reply, |pieces| {
                assert_eq!(run(Adapter::Chat, &names, pieces).0, want, "{pieces:?}");
            });
        }
        // Not markers: a name with a space, an empty name, `#` inside.
        for reply in [
            "[[ ## answer ## ]] a [[ ## two words ## ]] b",
            "[[ ## answer ## ]] a [[ ## ## ]] b",
            "[[ ## answer ## ]] a [[ # # reasoning ]] b",
            "[[ ## answer ## ]] a [[[ ## reasoning ## ]] b",
        ] {
            let want = reply.strip_prefix("[[ ## answer ## ]] ").unwrap();
            every_split(reply, |pieces| {
                assert_eq!(
                    run(Adapter::Chat, &names, pieces).0,
                    ["", want],
                    "{pieces:?}"
                );
            });
        }
    }

    #[test]
    fn chat_unknown_markers_are_not_emitted() {
        let reply =
            "preamble [[ ## notes ## ]] skip me [[ ## answer ## ]] yes [[ ## other ## ]] no";
        every_split(reply, |pieces| {
            assert_eq!(run(Adapter::Chat, &["answer"], pieces).0, ["yes"]);
        });
    }

    #[test]
    fn chat_nothing_after_completed() {
        let mut stream = FieldStream::new(Adapter::Chat, fields(&["answer"]));
        let mut out = Vec::new();
        stream.push("[[ ## answer ## ]] 1 [[ ## completed ## ]]", &mut out);
        assert!(stream.completed());
        assert_eq!(stream.current_field(), None);
        stream.push(" [[ ## answer ## ]] 2", &mut out);
        stream.finish(&mut out);
        assert_eq!(
            out,
            [FieldDelta {
                field: 0,
                text: "1".into()
            }]
        );
    }

    #[test]
    fn chat_fields_out_of_order() {
        let mut stream = FieldStream::new(Adapter::Chat, fields(&["reasoning", "answer"]));
        let mut out = Vec::new();
        assert_eq!(stream.current_field(), None);
        stream.push("[[ ## answer ## ]]\n42\n", &mut out);
        assert_eq!(stream.current_field(), Some(1));
        stream.push("[[ ## reasoning ## ]]\nbecause", &mut out);
        assert_eq!(stream.current_field(), Some(0));
        stream.finish(&mut out);
        let got: Vec<(usize, &str)> = out.iter().map(|d| (d.field, d.text.as_str())).collect();
        assert_eq!(got, [(1, "42"), (0, "because")]);
    }

    #[test]
    fn chat_repeated_field_streams_its_first_section() {
        let reply = "[[ ## answer ## ]] first [[ ## answer ## ]] second";
        assert_eq!(whole(Adapter::Chat, &["answer", "x"], reply), ["first", ""]);
        let parsed = Adapter::Chat.parse_fields(&fields(&["answer", "x"]), reply);
        assert_eq!(parsed.outputs["answer"], "first");
    }

    #[test]
    fn chat_trailing_whitespace_is_held_back() {
        let mut stream = FieldStream::new(Adapter::Chat, fields(&["answer"]));
        let mut out = Vec::new();
        let mut step = |piece: &str| {
            out.clear();
            stream.push(piece, &mut out);
            out.iter().map(|d| d.text.clone()).collect::<String>()
        };
        assert_eq!(step("[[ ## answer ## ]]  \n "), "");
        assert_eq!(step(" Hello"), "Hello");
        assert_eq!(step("  \n "), "");
        assert_eq!(step("world"), "  \n world");
        assert_eq!(step("\n\n"), "");
        assert_eq!(step("[[ ## completed ## ]]"), "");
        stream.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn chat_brackets_that_are_not_markers_are_text() {
        let mut stream = FieldStream::new(Adapter::Chat, fields(&["answer"]));
        let mut out = Vec::new();
        let mut step = |piece: &str| {
            out.clear();
            stream.push(piece, &mut out);
            out.iter().map(|d| d.text.clone()).collect::<String>()
        };
        assert_eq!(step("[[ ## answer ## ]] a ["), "a");
        assert_eq!(step("b"), " [b");
        // Held while it could be a marker, released at the first byte that
        // rules it out.
        assert_eq!(step(" [[ ## x"), "");
        assert_eq!(step("y ## ]"), "");
        assert_eq!(step(" ]"), " [[ ## xy ## ] ]");
        assert_eq!(step(" list[0] [[ y z"), " list[0] [[ y z");
    }

    #[test]
    fn chat_finish_flushes_a_broken_stream() {
        let mut stream = FieldStream::new(Adapter::Chat, fields(&["answer"]));
        let mut out = Vec::new();
        stream.push("[[ ## answer ## ]] The answer is [[ ## ans", &mut out);
        assert_eq!(out[0].text, "The answer is");
        stream.finish(&mut out);
        assert_eq!(out[1].text, " [[ ## ans");
        stream.finish(&mut out);
        assert_eq!(out.len(), 2);
        let parsed = Adapter::Chat.parse_fields(&fields(&["answer", "x"]), stream.reply());
        assert_eq!(parsed.outputs["answer"], "The answer is [[ ## ans");
    }

    #[test]
    fn chat_deltas_are_merged_per_push_and_keep_earlier_ones() {
        let mut stream = FieldStream::new(Adapter::Chat, fields(&["a", "b"]));
        let mut out = vec![FieldDelta {
            field: 0,
            text: "caller's".into(),
        }];
        stream.push("[[ ## a ## ]] x [y] z [[ ## b ## ]] w", &mut out);
        let got: Vec<(usize, &str)> = out.iter().map(|d| (d.field, d.text.as_str())).collect();
        assert_eq!(got, [(0, "caller's"), (0, "x [y] z"), (1, "w")]);
    }

    #[test]
    fn json_escapes_split_everywhere() {
        let reply = r#"{"answer": "a\nb \"q\" c\\d \/ \u00e9 \ud83d\ude00 end\t", "n": 1}"#;
        every_split(reply, |pieces| {
            let (texts, completed, _) = run(Adapter::Json, &["answer"], pieces);
            assert_eq!(texts, ["a\nb \"q\" c\\d / é 😀 end\t"], "{pieces:?}");
            assert!(completed);
        });
        let decoded: Value = serde_json::from_str(reply).unwrap();
        assert_eq!(
            decoded["answer"],
            whole(Adapter::Json, &["answer"], reply)[0]
        );
    }

    #[test]
    fn json_broken_escapes_do_not_panic() {
        for (reply, want) in [
            (r#"{"answer": "\ud83d x"}"#, "\u{FFFD} x"),
            (r#"{"answer": "\ude00"}"#, "\u{FFFD}"),
            (r#"{"answer": "\ud83d\n"}"#, "\u{FFFD}\n"),
            (r#"{"answer": "\ud83d\u0041"}"#, "\u{FFFD}A"),
            (r#"{"answer": "\u00zz"}"#, "\u{FFFD}zz"),
            (r#"{"answer": "\x\é"}"#, "\\x\\é"),
        ] {
            every_split(reply, |pieces| {
                assert_eq!(
                    run(Adapter::Json, &["answer"], pieces).0,
                    [want],
                    "{pieces:?}"
                );
            });
        }
    }

    #[test]
    fn json_nested_values_stream_raw() {
        let reply = r#"{"meta": {"a": "}", "b": ["]", "\"{"]}, "answer": [1, {"x": "}\""}], "score": 0.5, "ok": true, "none": null}"#;
        let names = ["meta", "answer", "score", "ok", "none"];
        every_split(reply, |pieces| {
            let (texts, completed, _) = run(Adapter::Json, &names, pieces);
            assert_eq!(
                texts,
                [
                    r#"{"a": "}", "b": ["]", "\"{"]}"#,
                    r#"[1, {"x": "}\""}]"#,
                    "0.5",
                    "true",
                    "null"
                ],
                "{pieces:?}"
            );
            assert!(completed);
        });
    }

    #[test]
    fn json_prose_and_fence_before_the_object() {
        let reply =
            "Sure! Here it is:\n```json\n{\n  \"answer\": \"Paris\"\n}\n```\n{\"answer\": \"no\"}";
        every_split(reply, |pieces| {
            let (texts, completed, _) = run(Adapter::Json, &["answer"], pieces);
            assert_eq!(texts, ["Paris"]);
            assert!(completed);
        });
    }

    #[test]
    fn json_unknown_keys_are_skipped() {
        let reply = r#"{"thoughts": "x", "extra": {"answer": "no"}, "list": ["answer"], "Answer": "yes", "answer": "later"}"#;
        every_split(reply, |pieces| {
            assert_eq!(run(Adapter::Json, &["answer"], pieces).0, ["yes"]);
        });
    }

    #[test]
    fn json_current_field_and_completion() {
        let mut stream = FieldStream::new(Adapter::Json, fields(&["reasoning", "answer"]));
        let mut out = Vec::new();
        stream.push(r#"{"answer": 4"#, &mut out);
        assert_eq!(stream.current_field(), Some(1));
        stream.push(r#"2, "reasoning": "be"#, &mut out);
        assert_eq!(stream.current_field(), Some(0));
        stream.push(r#"cause"}"#, &mut out);
        assert_eq!(stream.current_field(), None);
        assert!(stream.completed());
        let got: Vec<(usize, &str)> = out.iter().map(|d| (d.field, d.text.as_str())).collect();
        assert_eq!(got, [(1, "4"), (1, "2"), (0, "be"), (0, "cause")]);
    }

    #[test]
    fn json_single_quotes_and_garbage_do_not_panic() {
        let reply = r#"{'answer': 'it\'s "fine"', 'n': True}"#;
        every_split(reply, |pieces| {
            assert_eq!(
                run(Adapter::Json, &["answer", "n"], pieces).0,
                [r#"it's "fine""#, "True"]
            );
        });
        for reply in [
            "{",
            "{\"",
            "{\"answer\"",
            "{\"answer\":",
            "{]]}}",
            "{\"a\" \"answer\": }",
            "{:,:\"}",
        ] {
            every_split(reply, |pieces| {
                run(Adapter::Json, &["answer"], pieces);
            });
        }
    }

    // ------------------------------------------------------------ properties

    /// Pieces of `text` cut at the char boundaries `cuts` pick.
    fn split<'a>(text: &'a str, cuts: &[prop::sample::Index]) -> Vec<&'a str> {
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let mut at: Vec<usize> = cuts.iter().map(|c| *c.get(&bounds)).collect();
        at.sort_unstable();
        let mut pieces = Vec::with_capacity(at.len() + 1);
        let mut from = 0;
        for cut in at {
            pieces.push(&text[from..cut]);
            from = cut;
        }
        pieces.push(&text[from..]);
        pieces
    }

    /// Checks that any split of `reply` streams the same as one push and as
    /// one push per char; returns the per-field texts.
    fn split_invariant(
        adapter: Adapter,
        names: &[&str],
        reply: &str,
        cuts: &[prop::sample::Index],
    ) -> Result<Vec<String>, TestCaseError> {
        let (one, done, _) = run(adapter, names, &[reply]);
        let (pieces, pieces_done, _) = run(adapter, names, &split(reply, cuts));
        prop_assert_eq!(&pieces, &one);
        prop_assert_eq!(pieces_done, done);
        let chars: Vec<String> = reply.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        let (by_char, by_char_done, _) = run(adapter, names, &chars);
        prop_assert_eq!(&by_char, &one);
        prop_assert_eq!(by_char_done, done);
        Ok(one)
    }

    const TOKENS: &[&str] = &[
        "a",
        "b",
        "x_1",
        "answer",
        " ",
        "  ",
        "\n",
        "\t",
        "\u{a0}",
        "\u{3000}",
        "[",
        "]",
        "[[",
        "]]",
        "#",
        "##",
        "\"",
        "'",
        "\\",
        "`",
        "{",
        "}",
        ":",
        ",",
        "é",
        "😀",
        "[[ ## answer ## ]]",
        "[[##reasoning##]]",
        "[[ ## notes ## ]]",
        "[[ ##",
    ];

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOKENS), 0..12).prop_map(|t| t.concat())
    }

    const CHAT_FIELDS: [&str; 3] = ["reasoning", "answer", "confidence"];

    fn marker(name: &str, style: usize, upper: bool) -> String {
        let name = if upper {
            name.to_ascii_uppercase()
        } else {
            name.to_owned()
        };
        match style {
            0 => format!("[[ ## {name} ## ]]\n"),
            1 => format!("[[##{name}##]]"),
            2 => format!("\n[[ {name} ]] "),
            _ => format!("[[ # {name} ##]]\n\n"),
        }
    }

    /// JSON text of `value`, each char escaped as `escape` picks: as is, a
    /// short escape, or `\uXXXX` (surrogate pairs beyond the BMP).
    fn json_string(value: &str, escape: &[u8]) -> String {
        let mut out = String::from("\"");
        for (i, c) in value.chars().enumerate() {
            let mode = escape.get(i % escape.len().max(1)).copied().unwrap_or(0) % 3;
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\t' => Some("\\t"),
                '/' => Some("\\/"),
                '\u{8}' => Some("\\b"),
                _ => None,
            };
            match (mode, short) {
                (0, None) if c >= ' ' => out.push(c),
                (0 | 1, Some(short)) => out.push_str(short),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
        }
        out.push('"');
        out
    }

    fn json_value() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "a",
                " ",
                "\"",
                "\\",
                "/",
                "\n",
                "\t",
                "\u{8}",
                "{",
                "}",
                "[",
                "]",
                "é",
                "😀",
                "\u{1f}",
                "\u{ffff}",
                "'",
                "\u{10ffff}",
            ]),
            0..16,
        )
        .prop_map(|t| t.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn chat_deltas_match_the_parser(
            preamble in text(),
            sections in prop::collection::vec((0..4usize, 0..4usize, any::<bool>(), text()), 1..5),
            completed in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            // A leading word keeps the parser off its JSON-reply fallback.
            let mut reply = format!("ok {preamble}");
            for (field, style, upper, value) in &sections {
                let name = CHAT_FIELDS.get(*field).copied().unwrap_or("notes");
                reply.push_str(&marker(name, *style, *upper));
                reply.push_str(value);
            }
            if completed {
                reply.push_str("\n\n[[ ## completed ## ]]");
            }
            let texts = split_invariant(Adapter::Chat, &CHAT_FIELDS, &reply, &cuts)?;
            let parsed = Adapter::Chat.parse_fields(&fields(&CHAT_FIELDS), &reply);
            for (name, text) in CHAT_FIELDS.iter().zip(&texts) {
                prop_assert_eq!(text.trim(), text.as_str());
                match parsed.outputs.get(*name) {
                    Some(value) => prop_assert_eq!(value, &Value::String(strip_fences(text).to_owned()), "{}", name),
                    None => prop_assert_eq!(text, "", "{}", name),
                }
            }
        }

        #[test]
        fn json_deltas_match_serde(
            values in prop::collection::vec((json_value(), any::<bool>(), prop::collection::vec(any::<u8>(), 1..8)), 2),
            unknown in json_value(),
            prose in "[a-z :\\n]{0,12}",
            fence in any::<bool>(),
            pretty in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let names = ["reasoning", "answer", "meta"];
            let nested = serde_json::json!({"k": [unknown, {"}": "{"}], "n": 1.5});
            let sep = if pretty { ",\n  " } else { "," };
            let mut object = String::from(if pretty { "{\n  " } else { "{" });
            object.push_str(&format!("\"skip\":{}{sep}", json_string(&unknown, &[1])));
            for (name, (value, upper, escape)) in names.iter().zip(&values) {
                let key = if *upper { name.to_ascii_uppercase() } else { (*name).to_owned() };
                object.push_str(&format!("{}: {}{sep}", json_string(&key, escape), json_string(value, escape)));
            }
            object.push_str(&format!("\"meta\": {nested}"));
            object.push_str(if pretty { "\n}" } else { "}" });
            let reply = format!("{prose}{}{object}{}", if fence { "```json\n" } else { "" }, if fence { "\n```" } else { "" });

            let texts = split_invariant(Adapter::Json, &names, &reply, &cuts)?;
            let decoded: Value = serde_json::from_str(&object).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for ((name, (value, upper, _)), text) in names.iter().zip(&values).zip(&texts) {
                let key = if *upper { name.to_ascii_uppercase() } else { (*name).to_owned() };
                prop_assert_eq!(&decoded[&key], &Value::String(value.clone()));
                prop_assert_eq!(text, value);
            }
            prop_assert_eq!(&texts[2], &nested.to_string());
            let parsed = Adapter::Json.parse_fields(&fields(&names[..2]), &reply);
            for (name, text) in names.iter().zip(&texts).take(2) {
                prop_assert_eq!(&parsed.outputs[*name], &Value::String(text.clone()));
            }
        }

        #[test]
        fn arbitrary_input_never_panics(
            reply in prop_oneof![
                any::<String>(),
                prop::collection::vec(prop_oneof![
                    prop::sample::select(TOKENS).prop_map(str::to_owned),
                    prop::sample::select(vec!["\\u", "\\ud83d", "\\ude00", "\\", "\"", "'", "{", "}", "[", "]", ":", ",", "0", "1f", "true", "[[ ## completed ## ]]"]).prop_map(str::to_owned),
                    any::<char>().prop_map(String::from),
                ], 0..40).prop_map(|t| t.concat()),
            ],
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            for adapter in [Adapter::Chat, Adapter::Json] {
                split_invariant(adapter, &["answer", "reasoning", "a"], &reply, &cuts)?;
            }
        }
    }
}
