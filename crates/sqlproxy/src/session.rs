//! What a client's session holds on its server, and so whether it can move to another
//! server between two commands without the client noticing. Pure, no I/O.
//!
//! A session moves (to the new primary after a failover, or off a replica that left
//! the readers) only when nothing it did lives on the old server alone:
//! - no open transaction (the server's `IN_TRANS` flag) and autocommit on;
//! - no prepared statement open (`COM_STMT_PREPARE` ids are the server's);
//! - no temporary table, named lock (`GET_LOCK`), `LOCK TABLES`, `HANDLER`, SQL-level
//!   `PREPARE`, XA transaction or user variable (`@x`) ever used: the endpoint cannot
//!   copy them, so such a session stays pinned and is closed instead of moved.
//!
//! What it can carry over is replayed on the new server, in order, before the next
//! command: the default database (`COM_INIT_DB`, `USE`) and every `SET` of session
//! variables (`SET NAMES`, `SET autocommit`, `SET time_zone`, `SET sql_mode`…).
//! `LAST_INSERT_ID()`, `FOUND_ROWS()` and `ROW_COUNT()` read the previous statement's
//! result: after a move they describe nothing (the client already has the values from
//! the OK packets, which is what drivers use).

use crate::packet::{com, status};
use crate::response::Outcome;

/// Most statements kept for replay; a session that sets more stays pinned.
pub const MAX_REPLAY: usize = 64;

/// What a statement does to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing that outlives it.
    Plain,
    /// Session state that the endpoint replays on a new server.
    Replay,
    /// Session state that cannot be moved (the reason).
    Pin(&'static str),
}

/// A session's state as far as moving it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    status: u16,
    open_statements: u32,
    pinned: Option<&'static str>,
    replay: Vec<Vec<u8>>,
    pending: Option<(u8, Effect, Vec<u8>)>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            status: status::AUTOCOMMIT,
            open_statements: 0,
            pinned: None,
            replay: Vec::new(),
            pending: None,
        }
    }
}

impl Session {
    /// A command is about to be relayed (its first packet's payload).
    pub fn command(&mut self, payload: &[u8]) {
        let Some((&command, body)) = payload.split_first() else {
            return;
        };
        let effect = match command {
            com::QUERY => classify(body),
            com::INIT_DB => Effect::Replay,
            com::STMT_CLOSE => {
                self.open_statements = self.open_statements.saturating_sub(1);
                Effect::Plain
            }
            _ => Effect::Plain,
        };
        // Only what is replayed is kept: most commands are not.
        let kept = if effect == Effect::Replay {
            payload.to_vec()
        } else {
            Vec::new()
        };
        self.pending = Some((command, effect, kept));
    }

    /// The answer to the last command ended as `outcome`.
    pub fn answered(&mut self, outcome: &Outcome) {
        if let Some(st) = outcome.status {
            self.status = st;
        }
        let Some((command, effect, payload)) = self.pending.take() else {
            return;
        };
        if outcome.error.is_some() {
            return;
        }
        if outcome.prepared.is_some() {
            self.open_statements += 1;
        }
        if command == com::RESET_CONNECTION {
            *self = Session {
                status: self.status,
                ..Session::default()
            };
            return;
        }
        match effect {
            Effect::Plain => {}
            Effect::Pin(why) => {
                self.pinned.get_or_insert(why);
            }
            Effect::Replay if self.replay.len() >= MAX_REPLAY => {
                self.pinned
                    .get_or_insert("more session settings than the endpoint keeps");
            }
            Effect::Replay => self.replay.push(payload),
        }
    }

    /// `Ok` when the session may move to another server now; else why not.
    pub fn movable(&self) -> Result<(), &'static str> {
        if let Some(why) = self.pinned {
            return Err(why);
        }
        if self.status & status::IN_TRANS != 0 {
            return Err("a transaction is open");
        }
        if self.status & status::AUTOCOMMIT == 0 {
            return Err("autocommit is off");
        }
        if self.open_statements > 0 {
            return Err("prepared statements are open");
        }
        if self.pending.is_some() {
            return Err("a command is under way");
        }
        Ok(())
    }

    /// The commands (whole payloads) that rebuild the session on a new server.
    pub fn replay(&self) -> &[Vec<u8>] {
        &self.replay
    }
}

/// What a `COM_QUERY`'s text does to the session. Conservative: anything it cannot
/// tell is harmless pins the session.
pub fn classify(sql: &[u8]) -> Effect {
    let words = Words::new(sql);
    let mut first: Option<String> = None;
    let mut second: Option<String> = None;
    let mut user_variable = false;
    let mut words_seen = 0usize;
    let mut effect = Effect::Plain;
    let mut statement_start = false;
    for token in words {
        match token {
            Token::Word(w) => {
                words_seen += 1;
                match words_seen {
                    1 => first = Some(w.clone()),
                    2 => second = Some(w.clone()),
                    _ => {}
                }
                match w.as_str() {
                    "TEMPORARY" => effect = Effect::Pin("a temporary table"),
                    "GET_LOCK" => effect = Effect::Pin("a named lock (GET_LOCK)"),
                    "SET" | "USE" | "LOCK" | "HANDLER" | "PREPARE" | "EXECUTE" | "DEALLOCATE"
                    | "XA"
                        if statement_start =>
                    {
                        effect = Effect::Pin("a later statement of a multi-statement query")
                    }
                    _ => {}
                }
                statement_start = false;
            }
            Token::UserVariable => user_variable = true,
            Token::Semicolon => statement_start = words_seen > 0,
        }
        if matches!(effect, Effect::Pin(_)) {
            return effect;
        }
    }
    let (first, second) = (first.unwrap_or_default(), second.unwrap_or_default());
    match first.as_str() {
        "SET" => match second.as_str() {
            // SET TRANSACTION without SESSION applies to the next transaction only;
            // GLOBAL changes the server, not the session.
            "TRANSACTION" | "GLOBAL" => Effect::Plain,
            _ => Effect::Replay,
        },
        "USE" => Effect::Replay,
        "LOCK" => Effect::Pin("LOCK TABLES"),
        "HANDLER" => Effect::Pin("a HANDLER"),
        "PREPARE" | "EXECUTE" | "DEALLOCATE" => Effect::Pin("an SQL-level prepared statement"),
        "XA" => Effect::Pin("an XA transaction"),
        _ if user_variable => Effect::Pin("a user variable"),
        _ => Effect::Plain,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// A keyword or identifier, upper-cased.
    Word(String),
    /// `@name` (not `@@system`).
    UserVariable,
    Semicolon,
}

/// The words of SQL text outside string literals, quoted identifiers and comments.
struct Words<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Words<'a> {
    fn new(s: &'a [u8]) -> Words<'a> {
        Words { s, i: 0 }
    }

    fn skip_quoted(&mut self, q: u8) {
        self.i += 1;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            if c == b'\\' && q != b'`' {
                self.i += 2;
                continue;
            }
            self.i += 1;
            if c == q {
                // A doubled quote is the quote itself.
                if self.s.get(self.i) == Some(&q) {
                    self.i += 1;
                    continue;
                }
                return;
            }
        }
    }
}

impl Iterator for Words<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        while self.i < self.s.len() {
            let c = self.s[self.i];
            match c {
                b'\'' | b'"' | b'`' => self.skip_quoted(c),
                b'#' => self.skip_line(),
                b'-' if self.s.get(self.i + 1) == Some(&b'-') => self.skip_line(),
                b'/' if self.s.get(self.i + 1) == Some(&b'*') => {
                    // `/*! … */` is executable on MySQL/MariaDB: its words count.
                    if self.s.get(self.i + 2) == Some(&b'!') {
                        self.i += 3;
                        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                            self.i += 1;
                        }
                        continue;
                    }
                    match self.s[self.i + 2..].windows(2).position(|w| w == b"*/") {
                        Some(p) => self.i += 2 + p + 2,
                        None => self.i = self.s.len(),
                    }
                }
                b'@' => {
                    if self.s.get(self.i + 1) == Some(&b'@') {
                        // @@system_variable: skip the name.
                        self.i += 2;
                        while self
                            .s
                            .get(self.i)
                            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
                        {
                            self.i += 1;
                        }
                        continue;
                    }
                    self.i += 1;
                    return Some(Token::UserVariable);
                }
                b';' => {
                    self.i += 1;
                    return Some(Token::Semicolon);
                }
                _ if c.is_ascii_alphabetic() || c == b'_' => {
                    let start = self.i;
                    while self
                        .s
                        .get(self.i)
                        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$')
                    {
                        self.i += 1;
                    }
                    let w = String::from_utf8_lossy(&self.s[start..self.i]).to_ascii_uppercase();
                    return Some(Token::Word(w));
                }
                _ => self.i += 1,
            }
        }
        None
    }
}

impl Words<'_> {
    fn skip_line(&mut self) {
        while self.i < self.s.len() && self.s[self.i] != b'\n' {
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Vec<u8> {
        let mut p = vec![com::QUERY];
        p.extend_from_slice(sql.as_bytes());
        p
    }

    fn ok(st: u16) -> Outcome {
        Outcome {
            status: Some(st),
            ..Outcome::default()
        }
    }

    const AC: u16 = status::AUTOCOMMIT;

    #[test]
    fn plain_statements_leave_the_session_movable() {
        let mut s = Session::default();
        for sql in [
            "SELECT * FROM posts WHERE author = 'ann@example.com'",
            "INSERT INTO t (a) VALUES ('@x', \"GET_LOCK\", `TEMPORARY`)",
            "select @@version, @@session.sql_mode",
            "/* GET_LOCK */ UPDATE t SET a = 1 -- TEMPORARY\n",
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ] {
            assert_eq!(classify(sql.as_bytes()), Effect::Plain, "{sql}");
            s.command(&query(sql));
            s.answered(&ok(AC));
        }
        assert_eq!(s.movable(), Ok(()));
        assert!(s.replay().is_empty());
    }

    #[test]
    fn set_and_use_are_replayed_in_order_once_they_succeed() {
        let mut s = Session::default();
        s.command(&query("SET NAMES utf8mb4"));
        s.answered(&ok(AC));
        s.command(&query("set time_zone = '+00:00'"));
        s.answered(&Outcome {
            error: Some(1298),
            ..Outcome::default()
        });
        s.command(&[com::INIT_DB, b'f', b'o', b'o']);
        s.answered(&ok(AC));
        s.command(&query("USE bar"));
        s.answered(&ok(AC));
        let replay: Vec<&[u8]> = s.replay().iter().map(Vec::as_slice).collect();
        assert_eq!(
            replay,
            [
                &query("SET NAMES utf8mb4")[..],
                &[com::INIT_DB, b'f', b'o', b'o'][..],
                &query("USE bar")[..],
            ],
            "the failed SET is not replayed"
        );
        assert_eq!(s.movable(), Ok(()));
    }

    #[test]
    fn what_cannot_be_copied_pins_the_session() {
        for (sql, why) in [
            ("CREATE TEMPORARY TABLE t (a INT)", "a temporary table"),
            ("SELECT GET_LOCK('deploy', 10)", "a named lock (GET_LOCK)"),
            ("LOCK TABLES t WRITE", "LOCK TABLES"),
            ("SELECT @n := COUNT(*) FROM t", "a user variable"),
            (
                "PREPARE s FROM 'SELECT 1'",
                "an SQL-level prepared statement",
            ),
            ("XA START 'x'", "an XA transaction"),
            (
                "/*!40101 SELECT GET_LOCK('a', 1) */",
                "a named lock (GET_LOCK)",
            ),
        ] {
            assert_eq!(classify(sql.as_bytes()), Effect::Pin(why), "{sql}");
            let mut s = Session::default();
            s.command(&query(sql));
            s.answered(&ok(AC));
            assert_eq!(s.movable(), Err(why), "{sql}");
        }
        // A failed statement pins nothing.
        let mut s = Session::default();
        s.command(&query("LOCK TABLES t WRITE"));
        s.answered(&Outcome {
            error: Some(1146),
            ..Outcome::default()
        });
        assert_eq!(s.movable(), Ok(()));
    }

    #[test]
    fn transactions_autocommit_and_statements_follow_the_server() {
        let mut s = Session::default();
        s.command(&query("BEGIN"));
        s.answered(&ok(AC | status::IN_TRANS));
        assert_eq!(s.movable(), Err("a transaction is open"));
        s.command(&query("COMMIT"));
        s.answered(&ok(AC));
        assert_eq!(s.movable(), Ok(()));

        s.command(&query("SET autocommit = 0"));
        s.answered(&ok(0));
        assert_eq!(s.movable(), Err("autocommit is off"));
        s.command(&query("SET autocommit = 1"));
        s.answered(&ok(AC));
        assert_eq!(s.movable(), Ok(()));

        s.command(&[com::STMT_PREPARE, b'S']);
        assert_eq!(s.movable(), Err("a command is under way"));
        s.answered(&Outcome {
            status: None,
            error: None,
            prepared: Some(1),
        });
        assert_eq!(s.movable(), Err("prepared statements are open"));
        s.command(&[com::STMT_CLOSE, 1, 0, 0, 0]);
        // COM_STMT_CLOSE has no answer: the next command's answer settles it.
        s.command(&[com::PING]);
        s.answered(&ok(AC));
        assert_eq!(s.movable(), Ok(()));

        s.command(&query("SELECT GET_LOCK('a', 1)"));
        s.answered(&ok(AC));
        assert!(s.movable().is_err());
        s.command(&[com::RESET_CONNECTION]);
        s.answered(&ok(AC));
        assert_eq!(s.movable(), Ok(()), "COM_RESET_CONNECTION clears it all");
        assert!(s.replay().is_empty());
    }

    #[test]
    fn too_many_settings_pin() {
        let mut s = Session::default();
        for i in 0..=MAX_REPLAY {
            s.command(&query(&format!("SET @@session.x{i} = 1")));
            s.answered(&ok(AC));
        }
        assert!(s.movable().is_err());
        assert_eq!(s.replay().len(), MAX_REPLAY);
    }

    #[test]
    fn the_scanner_survives_hostile_text() {
        for sql in [
            &b"'unterminated"[..],
            b"/* unterminated",
            b"\"a\\",
            b"@",
            b"@@",
            b"\xff\xfe SELECT",
            b"`x``y` @",
            b"/*!",
        ] {
            let _ = classify(sql);
        }
        assert_eq!(classify(b"SELECT 'it''s @x'"), Effect::Plain);
        assert_eq!(
            classify(b"SELECT 1; SET NAMES latin1"),
            Effect::Pin("a later statement of a multi-statement query")
        );
        assert_eq!(classify(b"SELECT 1; SELECT 2;"), Effect::Plain);
    }
}
