//! Where a server's answer to one command ends. The endpoint relays every packet as it
//! comes and feeds the first packet of each logical packet here; this says when the
//! answer is complete, with the status flags it ended on. Pure, no I/O.
//!
//! The shapes (with `CLIENT_DEPRECATE_EOF` off, which the endpoint never offers):
//! - OK, ERR, or EOF alone (most commands);
//! - a result set: column count, column definitions, EOF, rows, EOF (or ERR), repeated
//!   while the status says `MORE_RESULTS` (`COM_QUERY`, `COM_STMT_EXECUTE`; a cursor
//!   ends it after the columns' EOF);
//! - `COM_STMT_PREPARE`: OK with the counts, then parameter and column definitions,
//!   each group closed by EOF;
//! - `COM_STMT_FETCH`: rows, then EOF; `COM_FIELD_LIST`: definitions, then EOF;
//! - `COM_STATISTICS`: one string.

use crate::packet::{self, Malformed, com, status};

/// What a command's answer looks like, or that it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No answer (`COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`).
    None,
    /// OK, ERR or EOF.
    Simple,
    /// Result sets.
    Results {
        /// A cursor may end the answer after the columns (`COM_STMT_EXECUTE`).
        cursor: bool,
    },
    /// `COM_STMT_PREPARE`'s answer.
    Prepare,
    /// Rows until EOF (`COM_STMT_FETCH`).
    Rows,
    /// Column definitions until EOF (`COM_FIELD_LIST`).
    Fields,
    /// One packet of text (`COM_STATISTICS`).
    Text,
}

impl Shape {
    /// The answer's shape for a command byte; `None` for a command the endpoint does
    /// not relay (replication, `COM_CHANGE_USER`, the long-obsolete ones).
    pub fn of(command: u8) -> Option<Shape> {
        Some(match command {
            com::QUERY => Shape::Results { cursor: false },
            com::STMT_EXECUTE => Shape::Results { cursor: true },
            com::STMT_PREPARE => Shape::Prepare,
            com::STMT_FETCH => Shape::Rows,
            com::FIELD_LIST => Shape::Fields,
            com::STATISTICS => Shape::Text,
            com::STMT_CLOSE | com::STMT_SEND_LONG_DATA => Shape::None,
            com::INIT_DB
            | com::PING
            | com::REFRESH
            | com::PROCESS_KILL
            | com::DEBUG
            | com::STMT_RESET
            | com::SET_OPTION
            | com::RESET_CONNECTION => Shape::Simple,
            _ => return None,
        })
    }
}

/// How an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The status flags of its last OK or EOF (`None`: it ended otherwise).
    pub status: Option<u16>,
    /// The error code, when it ended with ERR.
    pub error: Option<u16>,
    /// `COM_STMT_PREPARE`: the statement id the server gave.
    pub prepared: Option<u32>,
}

/// After a packet: more to come, or the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The answer goes on.
    More,
    /// The answer is complete.
    Done(Outcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first packet of a result (or of the answer).
    First,
    /// Column definitions still to come, then EOF.
    Columns(u64),
    /// Rows until EOF or ERR.
    Rows,
    /// `COM_STMT_PREPARE`: parameter definitions, then EOF, then the columns.
    Params { left: u16, columns: u16 },
    /// `COM_STMT_PREPARE`: column definitions, then EOF.
    PrepareColumns(u16),
    /// `COM_STMT_PREPARE`: the EOF that closes a group, then `next` columns (0: done).
    PrepareEof { columns: u16 },
}

/// Follows one answer of shape [`Shape`] packet by packet.
#[derive(Debug, Clone)]
pub struct Tracker {
    shape: Shape,
    state: State,
    prepared: Option<u32>,
}

impl Tracker {
    /// A tracker for the answer to a command of `shape` (not [`Shape::None`]).
    pub fn new(shape: Shape) -> Tracker {
        let state = match shape {
            Shape::Rows => State::Rows,
            Shape::Fields => State::Columns(u64::MAX),
            _ => State::First,
        };
        Tracker {
            shape,
            state,
            prepared: None,
        }
    }

    /// The next logical packet of the answer (its whole first physical packet).
    pub fn feed(&mut self, p: &[u8]) -> Result<Step, Malformed> {
        let first = *p.first().ok_or(Malformed {
            what: "empty response",
        })?;
        let done = |status: Option<u16>, error: Option<u16>, prepared| {
            Ok(Step::Done(Outcome {
                status,
                error,
                prepared,
            }))
        };
        let error = |p: &[u8]| packet::parse_err(p).map(|(code, _)| code);
        match (self.shape, self.state) {
            (Shape::Simple, _) => match first {
                0x00 => done(Some(packet::ok_status(p)?), None, None),
                0xff => done(None, Some(error(p)?), None),
                _ if packet::is_eof(p) => done(Some(packet::eof_status(p)?), None, None),
                _ => Err(Malformed {
                    what: "answer (expected OK, ERR or EOF)",
                }),
            },
            (Shape::Text, _) => done(None, (first == 0xff).then_some(0), None),
            (Shape::Prepare, State::First) => match first {
                0x00 => {
                    let (id, columns, params) = packet::prepare_ok(p)?;
                    self.prepared = Some(id);
                    self.state = match (params, columns) {
                        (0, 0) => return done(None, None, self.prepared),
                        (0, c) => State::PrepareColumns(c),
                        (left, columns) => State::Params { left, columns },
                    };
                    Ok(Step::More)
                }
                0xff => done(None, Some(error(p)?), None),
                _ => Err(Malformed {
                    what: "COM_STMT_PREPARE answer",
                }),
            },
            (Shape::Prepare, State::Params { left, columns }) => {
                self.state = if left > 1 {
                    State::Params {
                        left: left - 1,
                        columns,
                    }
                } else {
                    State::PrepareEof { columns }
                };
                Ok(Step::More)
            }
            (Shape::Prepare, State::PrepareColumns(left)) => {
                self.state = if left > 1 {
                    State::PrepareColumns(left - 1)
                } else {
                    State::PrepareEof { columns: 0 }
                };
                Ok(Step::More)
            }
            (Shape::Prepare, State::PrepareEof { columns }) => {
                if !packet::is_eof(p) {
                    return Err(Malformed {
                        what: "COM_STMT_PREPARE answer (expected EOF)",
                    });
                }
                if columns == 0 {
                    return done(Some(packet::eof_status(p)?), None, self.prepared);
                }
                self.state = State::PrepareColumns(columns);
                Ok(Step::More)
            }
            (_, State::First) => match first {
                0x00 => {
                    let st = packet::ok_status(p)?;
                    if st & status::MORE_RESULTS != 0 {
                        Ok(Step::More)
                    } else {
                        done(Some(st), None, None)
                    }
                }
                0xff => done(None, Some(error(p)?), None),
                0xfb => Err(Malformed {
                    what: "LOCAL INFILE request (never offered)",
                }),
                _ => {
                    let n = packet::lenenc(p)?;
                    if n == 0 {
                        return Err(Malformed {
                            what: "result set of no columns",
                        });
                    }
                    self.state = State::Columns(n);
                    Ok(Step::More)
                }
            },
            (_, State::Columns(left)) => {
                if left == u64::MAX {
                    // COM_FIELD_LIST: definitions until EOF or ERR.
                    return match first {
                        0xff => done(None, Some(error(p)?), None),
                        _ if packet::is_eof(p) => done(Some(packet::eof_status(p)?), None, None),
                        _ => Ok(Step::More),
                    };
                }
                if left > 0 {
                    self.state = State::Columns(left - 1);
                    return Ok(Step::More);
                }
                // The EOF after the definitions.
                if !packet::is_eof(p) {
                    return Err(Malformed {
                        what: "result set (expected EOF after the columns)",
                    });
                }
                let st = packet::eof_status(p)?;
                if matches!(self.shape, Shape::Results { cursor: true })
                    && st & status::CURSOR_EXISTS != 0
                {
                    return done(Some(st), None, None);
                }
                self.state = State::Rows;
                Ok(Step::More)
            }
            (_, State::Rows) => match first {
                0xff => done(None, Some(error(p)?), None),
                _ if packet::is_eof(p) => {
                    let st = packet::eof_status(p)?;
                    if st & status::MORE_RESULTS != 0 && self.shape != Shape::Rows {
                        self.state = State::First;
                        Ok(Step::More)
                    } else {
                        done(Some(st), None, None)
                    }
                }
                _ => Ok(Step::More),
            },
            (_, State::Params { .. } | State::PrepareColumns(_) | State::PrepareEof { .. }) => {
                Err(Malformed {
                    what: "answer (tracker out of step)",
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{err, ok};

    const AC: u16 = status::AUTOCOMMIT;

    fn eof(st: u16) -> Vec<u8> {
        let mut v = vec![0xfe, 0, 0];
        v.extend_from_slice(&st.to_le_bytes());
        v
    }

    /// Feeds every packet; the last must end the answer, none before it.
    fn run(shape: Shape, packets: &[Vec<u8>]) -> Outcome {
        let mut t = Tracker::new(shape);
        let (last, before) = packets.split_last().expect("packets");
        for (i, p) in before.iter().enumerate() {
            assert_eq!(t.feed(p), Ok(Step::More), "packet {i} of {packets:?}");
        }
        match t.feed(last) {
            Ok(Step::Done(o)) => o,
            other => panic!("the last packet did not end the answer: {other:?}"),
        }
    }

    #[test]
    fn ok_err_and_eof_end_a_simple_answer() {
        assert_eq!(run(Shape::Simple, &[ok(0, 0, AC)]).status, Some(AC));
        assert_eq!(
            run(Shape::Simple, &[err(1049, "42000", "Unknown database")]).error,
            Some(1049)
        );
        assert_eq!(run(Shape::Simple, &[eof(AC)]).status, Some(AC));
        assert!(Tracker::new(Shape::Simple).feed(&[0x03, b'a']).is_err());
    }

    #[test]
    fn a_text_result_set_ends_on_its_second_eof() {
        // SELECT 1, 2: count 2, two definitions, EOF, two rows, EOF inside a transaction.
        let rows = [
            vec![2],
            b"\x03defcol1".to_vec(),
            b"\x03defcol2".to_vec(),
            eof(AC),
            b"\x011\x012".to_vec(),
            b"\x013\x014".to_vec(),
            eof(AC | status::IN_TRANS),
        ];
        let o = run(Shape::Results { cursor: false }, &rows);
        assert_eq!(o.status, Some(AC | status::IN_TRANS));
        assert_eq!(o.error, None);
    }

    #[test]
    fn a_row_that_starts_with_0xfe_is_a_row() {
        let mut big = vec![0xfe];
        big.extend_from_slice(&(1u64 << 24).to_le_bytes());
        big.push(b'x');
        let rows = [vec![1], b"\x03def".to_vec(), eof(AC), big, eof(AC)];
        run(Shape::Results { cursor: false }, &rows);
    }

    #[test]
    fn more_results_chain_result_sets_and_oks() {
        // CALL p(): a result set, then the procedure's final OK.
        let more = AC | status::MORE_RESULTS;
        let packets = [
            vec![1],
            b"\x03def".to_vec(),
            eof(AC),
            b"\x011".to_vec(),
            eof(more),
            ok(0, 0, AC),
        ];
        assert_eq!(
            run(Shape::Results { cursor: false }, &packets).status,
            Some(AC)
        );
        // Multi-statements: OK with MORE_RESULTS, then an ERR ends it.
        let packets = [ok(1, 0, more), err(1062, "23000", "Duplicate entry")];
        assert_eq!(
            run(Shape::Results { cursor: false }, &packets).error,
            Some(1062)
        );
    }

    #[test]
    fn an_error_mid_rows_ends_the_answer() {
        let packets = [
            vec![1],
            b"\x03def".to_vec(),
            eof(AC),
            b"\x011".to_vec(),
            err(1317, "70100", "Query execution was interrupted"),
        ];
        assert_eq!(
            run(Shape::Results { cursor: false }, &packets).error,
            Some(1317)
        );
    }

    #[test]
    fn a_cursor_ends_execute_after_the_columns() {
        let packets = [
            vec![1],
            b"\x03def".to_vec(),
            eof(AC | status::CURSOR_EXISTS),
        ];
        run(Shape::Results { cursor: true }, &packets);
        // COM_STMT_FETCH then gives rows and an EOF.
        let fetch = [vec![0, 0, 1], eof(AC | status::CURSOR_EXISTS)];
        run(Shape::Rows, &fetch);
    }

    #[test]
    fn prepare_answers_name_the_statement() {
        let prep = |id: u32, cols: u16, params: u16| {
            let mut v = vec![0];
            v.extend_from_slice(&id.to_le_bytes());
            v.extend_from_slice(&cols.to_le_bytes());
            v.extend_from_slice(&params.to_le_bytes());
            v.extend_from_slice(&[0, 0, 0]);
            v
        };
        let def = b"\x03def".to_vec();
        // SELECT ?, ? FROM t: 2 params, 1 column.
        let o = run(
            Shape::Prepare,
            &[
                prep(5, 1, 2),
                def.clone(),
                def.clone(),
                eof(AC),
                def.clone(),
                eof(AC),
            ],
        );
        assert_eq!(o.prepared, Some(5));
        // INSERT … VALUES (?): params only; DO 1: nothing at all.
        assert_eq!(
            run(Shape::Prepare, &[prep(6, 0, 1), def.clone(), eof(AC)]).prepared,
            Some(6)
        );
        assert_eq!(run(Shape::Prepare, &[prep(7, 0, 0)]).prepared, Some(7));
        assert_eq!(
            run(Shape::Prepare, &[prep(8, 2, 0), def.clone(), def, eof(AC)]).prepared,
            Some(8)
        );
        let e = run(Shape::Prepare, &[err(1064, "42000", "syntax")]);
        assert_eq!((e.error, e.prepared), (Some(1064), None));
    }

    #[test]
    fn field_list_and_statistics() {
        run(Shape::Fields, &[b"\x03def".to_vec(), eof(AC)]);
        run(Shape::Text, &[b"Uptime: 5  Threads: 1".to_vec()]);
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        for shape in [
            Shape::Simple,
            Shape::Results { cursor: true },
            Shape::Prepare,
            Shape::Rows,
            Shape::Fields,
        ] {
            for p in [
                &b""[..],
                b"\xfb/etc/passwd",
                b"\x00",
                b"\xfc",
                b"\xff",
                b"\x00\xff\xff\xff\xff\xff",
            ] {
                let mut t = Tracker::new(shape);
                let _ = t.feed(p);
                let _ = t.feed(p);
            }
        }
        assert!(
            Tracker::new(Shape::Results { cursor: false })
                .feed(b"\xfbfile")
                .is_err(),
            "LOCAL INFILE is never relayed"
        );
    }

    #[test]
    fn commands_have_shapes_or_are_refused() {
        assert_eq!(
            Shape::of(com::QUERY),
            Some(Shape::Results { cursor: false })
        );
        assert_eq!(Shape::of(com::STMT_CLOSE), Some(Shape::None));
        assert_eq!(Shape::of(com::CHANGE_USER), None);
        assert_eq!(Shape::of(0x12), None, "COM_BINLOG_DUMP is not relayed");
        assert_eq!(Shape::of(0x1e), None, "COM_BINLOG_DUMP_GTID is not relayed");
    }
}
