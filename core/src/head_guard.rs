//! Time and size limits on a client's request heads, as a pure state machine over the bytes a
//! connection reads and the moments it writes.
//!
//! Pingora's own read timeout applies to each read, so a client that sends one header line just
//! before every timeout holds a connection (and its buffer) forever, and it buffers up to 1 MiB
//! of head before refusing one. The edge's client stream feeds every
//! read and write through a [`HeadGuard`], which knows where a request head begins and ends
//! without parsing it:
//!
//! - **idle**: between requests (and before the first), the connection may stay silent for the
//!   idle timeout; then it is closed quietly, as a keep-alive timeout is;
//! - **head**: from the first byte of a request line, the whole head (through its empty line)
//!   must arrive within the head timeout and within [`HeadLimits::max_bytes`]; empty lines
//!   before a request line (which RFC 9112 lets a server ignore) count against both, so
//!   `\r\n\r\n` followed by a slow dribble gains nothing;
//! - **request line**: `METHOD SP target SP version` with single spaces and no control
//!   characters, or `400`: Pingora would otherwise percent-encode a raw space in the target and
//!   serve a path the client never sent;
//! - **body**: once the head is complete, no deadline of ours applies (a request body, or
//!   pipelined requests already read, are Pingora's to bound) until the connection writes a
//!   response, which starts the next idle period.

use std::time::{Duration, Instant};

/// The limits, per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// How long a connection may wait for the first byte of a request.
    pub idle: Duration,
    /// How long a request head may take from its first byte to its end.
    pub head: Duration,
    /// How many bytes a request head may have.
    pub max_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            idle: Duration::from_secs(60),
            head: Duration::from_secs(10),
            max_bytes: 64 * 1024,
        }
    }
}

/// Why a connection is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cutoff {
    /// Idle past the idle timeout: close without a word.
    Idle,
    /// The head took longer than the head timeout: `408`.
    HeadTimeout,
    /// The head is larger than allowed: `431`.
    HeadTooLarge,
    /// The request line is malformed: `400`.
    BadRequestLine,
}

impl Cutoff {
    /// The response sent (best effort) before the connection closes, if any.
    pub fn response(self) -> Option<&'static [u8]> {
        match self {
            Cutoff::Idle => None,
            Cutoff::HeadTimeout => Some(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 32\r\nconnection: close\r\n\r\nThe request head took too long.\n",
            ),
            Cutoff::HeadTooLarge => Some(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 31\r\nconnection: close\r\n\r\nThe request head is too large.\n",
            ),
            Cutoff::BadRequestLine => Some(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 31\r\nconnection: close\r\n\r\nThe request line is malformed.\n",
            ),
        }
    }
}

/// What the request line has shown so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RequestLine {
    /// The line ended.
    done: bool,
    spaces: u8,
    previous_space: bool,
    bad: bool,
}

impl RequestLine {
    fn push(&mut self, b: u8) {
        match b {
            b' ' => {
                self.bad |= self.previous_space || self.spaces == 2;
                self.spaces += u8::from(self.spaces < 2);
                self.previous_space = true;
            }
            b'\r' => {}
            _ if b.is_ascii_control() || b == 0x7f => self.bad = true,
            _ => self.previous_space = false,
        }
    }

    fn ok_at_end(&self) -> bool {
        !self.bad && self.spaces == 2 && !self.previous_space
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request, since this moment.
    Idle { since: Instant },
    /// Inside a head that started at `since`.
    Head {
        since: Instant,
        bytes: usize,
        /// A byte other than CR or LF has been seen (a request line started).
        started: bool,
        /// Non-zero once the current line has a byte other than CR (the ones counted so far).
        line: usize,
        /// The request line so far.
        request_line: RequestLine,
    },
    /// The head is complete; waiting for the response.
    Body,
    /// Switched to another protocol (WebSocket): no limits of ours.
    Upgraded,
}

/// The state of one connection's current request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadGuard {
    limits: HeadLimits,
    phase: Phase,
}

impl HeadGuard {
    /// A new connection, idle since `now`.
    pub fn new(limits: HeadLimits, now: Instant) -> Self {
        HeadGuard {
            limits,
            phase: Phase::Idle { since: now },
        }
    }

    /// Whether a request head has begun and not yet ended.
    pub fn in_head(&self) -> bool {
        matches!(self.phase, Phase::Head { .. })
    }

    /// The moment at which the connection is cut off if nothing changes, and why.
    pub fn deadline(&self) -> Option<(Instant, Cutoff)> {
        match self.phase {
            Phase::Idle { since } => Some((since + self.limits.idle, Cutoff::Idle)),
            Phase::Head { since, .. } => Some((since + self.limits.head, Cutoff::HeadTimeout)),
            Phase::Body | Phase::Upgraded => None,
        }
    }

    /// Bytes read at `now`; `Err` when they break a limit.
    pub fn on_read(&mut self, data: &[u8], now: Instant) -> Result<(), Cutoff> {
        self.scan(data, now, true)
    }

    /// [`Self::on_read`] by the reference scan, every byte of the head through the
    /// byte-by-byte loop: what the tests and the `request_head` fuzz target hold the line
    /// jumps to (same answers, same state).
    #[doc(hidden)]
    pub fn on_read_byte_by_byte(&mut self, data: &[u8], now: Instant) -> Result<(), Cutoff> {
        self.scan(data, now, false)
    }

    /// The scan; without `jump`, every byte of the head goes through the byte-by-byte loop
    /// (what the tests compare the line jumps with).
    fn scan(&mut self, data: &[u8], now: Instant, jump: bool) -> Result<(), Cutoff> {
        let mut rest = data;
        while !rest.is_empty() {
            match &mut self.phase {
                Phase::Body | Phase::Upgraded => return Ok(()),
                Phase::Idle { .. } => {
                    self.phase = Phase::Head {
                        since: now,
                        bytes: 0,
                        started: false,
                        line: 0,
                        request_line: RequestLine::default(),
                    };
                }
                Phase::Head {
                    bytes,
                    started,
                    line,
                    request_line,
                    ..
                } => {
                    let mut consumed = 0;
                    let mut ended = false;
                    // The rest of a started request line: found to its end and validated as
                    // one run (the loop below looked at each byte in several ways).
                    if jump && *started && !request_line.done {
                        let end = rest.iter().position(|&b| b == b'\n');
                        let run = &rest[..end.unwrap_or(rest.len())];
                        for &b in run {
                            request_line.push(b);
                        }
                        *line += usize::from(run.iter().any(|&b| b != b'\r'));
                        consumed = run.len() + usize::from(end.is_some());
                        *bytes += consumed;
                        if end.is_some() {
                            request_line.done = true;
                            if !request_line.ok_at_end() {
                                return Err(Cutoff::BadRequestLine);
                            }
                            *line = 0;
                        }
                    }
                    // After the request line only the empty line that ends the head matters:
                    // jump from line end to line end instead of looking at every byte (this
                    // loop ran for every byte of every request head).
                    let jumped_from = consumed;
                    while jump && *started && request_line.done && consumed < rest.len() {
                        let seg = &rest[consumed..];
                        let Some(k) = seg.iter().position(|&b| b == b'\n') else {
                            *line += usize::from(seg.iter().any(|&b| b != b'\r'));
                            consumed = rest.len();
                            break;
                        };
                        consumed += k + 1;
                        if *line == 0 && seg[..k].iter().all(|&b| b == b'\r') {
                            ended = true;
                            break;
                        }
                        *line = 0;
                    }
                    *bytes += consumed - jumped_from;
                    for &b in &rest[consumed..] {
                        // Once a request line started, the runs above take over.
                        if ended || (jump && *started) {
                            break;
                        }
                        consumed += 1;
                        *bytes += 1;
                        if *started && !request_line.done && b != b'\n' {
                            request_line.push(b);
                        }
                        match b {
                            b'\r' => {}
                            b'\n' if *started && *line == 0 => {
                                ended = true;
                                break;
                            }
                            b'\n' => {
                                if *started && !request_line.done {
                                    request_line.done = true;
                                    if !request_line.ok_at_end() {
                                        return Err(Cutoff::BadRequestLine);
                                    }
                                }
                                *line = 0;
                            }
                            _ => {
                                if !*started {
                                    *started = true;
                                    request_line.push(b);
                                }
                                *line += 1;
                            }
                        }
                    }
                    // Checked where the byte-by-byte scan checks it: at the end of what was
                    // read or of the head, so both refuse the same head for the same reason.
                    if (ended || consumed == rest.len()) && *bytes > self.limits.max_bytes {
                        return Err(Cutoff::HeadTooLarge);
                    }
                    rest = &rest[consumed..];
                    if ended {
                        self.phase = Phase::Body;
                    }
                }
            }
        }
        if let Some((deadline, cutoff)) = self.deadline() {
            if cutoff == Cutoff::HeadTimeout && now > deadline {
                return Err(cutoff);
            }
        }
        Ok(())
    }

    /// The connection writes `data` at `now`. After a complete head, a response begins and
    /// the next idle period starts at its last write (a long response, such as an event
    /// stream, is not idle); a `101 Switching Protocols` hands the connection to another
    /// protocol, which these limits no longer apply to; other interim (`1xx`) responses and
    /// writes while a head is still arriving change nothing.
    pub fn on_write(&mut self, data: &[u8], now: Instant) {
        match self.phase {
            Phase::Body if data.starts_with(b"HTTP/1.1 101 ") => self.phase = Phase::Upgraded,
            Phase::Body if data.starts_with(b"HTTP/1.1 1") => {}
            Phase::Body | Phase::Idle { .. } => self.phase = Phase::Idle { since: now },
            Phase::Head { .. } | Phase::Upgraded => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            idle: Duration::from_secs(60),
            head: Duration::from_secs(10),
            max_bytes: 100,
        }
    }

    #[test]
    fn phases_follow_heads_and_responses() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut g = HeadGuard::new(limits(), t0);
        assert_eq!(g.deadline(), Some((s(60), Cutoff::Idle)));
        assert!(!g.in_head());
        g.on_read(b"GET / HTTP/1.1\r\nHost: a\r\n", s(5)).unwrap();
        assert!(g.in_head());
        assert_eq!(g.deadline(), Some((s(15), Cutoff::HeadTimeout)));
        g.on_read(b"\r\n", s(6)).unwrap();
        assert!(!g.in_head());
        assert_eq!(g.deadline(), None, "complete head: no deadline of ours");
        g.on_write(b"HTTP/1.1 200 OK\r\n", s(7));
        assert_eq!(g.deadline(), Some((s(67), Cutoff::Idle)));
        g.on_write(b"more of a long body", s(30));
        assert_eq!(
            g.deadline(),
            Some((s(90), Cutoff::Idle)),
            "idle counts from the last write"
        );
        // Bare LF line endings end a head too.
        g.on_read(b"GET / HTTP/1.1\nHost: a\n\n", s(8)).unwrap();
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn leading_empty_lines_do_not_end_a_head() {
        let t0 = Instant::now();
        let mut g = HeadGuard::new(limits(), t0);
        g.on_read(b"\r\n\r\nGET / HTTP/1.1\r\n", t0).unwrap();
        assert_eq!(
            g.deadline().map(|d| d.1),
            Some(Cutoff::HeadTimeout),
            "the dribble that follows is still inside the head's deadline"
        );
        g.on_read(b"X-A: 1\r\n", t0 + Duration::from_secs(9))
            .unwrap();
        assert_eq!(
            g.on_read(b"X-B: 2\r\n", t0 + Duration::from_secs(11)),
            Err(Cutoff::HeadTimeout)
        );
    }

    #[test]
    fn head_size_is_capped_across_reads_and_counts_leading_lines() {
        let t0 = Instant::now();
        let mut g = HeadGuard::new(limits(), t0);
        g.on_read(&[b'a'; 60], t0).unwrap();
        assert_eq!(g.on_read(&[b'a'; 41], t0), Err(Cutoff::HeadTooLarge));
        let mut g = HeadGuard::new(limits(), t0);
        assert_eq!(g.on_read(&[b'\n'; 101], t0), Err(Cutoff::HeadTooLarge));
        let mut g = HeadGuard::new(limits(), t0);
        let mut exact = b"GET /".to_vec();
        exact.extend_from_slice(&[b'a'; 84]);
        exact.extend_from_slice(b" HTTP/1.1\n\n");
        assert_eq!(exact.len(), 100);
        assert_eq!(g.on_read(&exact, t0), Ok(()), "a 100-byte head is allowed");
    }

    #[test]
    fn bytes_after_a_head_belong_to_its_body_or_the_next_pipelined_request() {
        let t0 = Instant::now();
        let mut g = HeadGuard::new(limits(), t0);
        let pipelined = [&b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[b'b'; 500]].concat();
        assert_eq!(g.on_read(&pipelined, t0), Ok(()));
        assert_eq!(g.deadline(), None);
        // An interim write while a head arrives does not reset its deadline.
        let mut g = HeadGuard::new(limits(), t0);
        g.on_read(b"GET", t0).unwrap();
        g.on_write(b"HTTP/1.1 200 OK\r\n", t0 + Duration::from_secs(5));
        assert_eq!(
            g.deadline(),
            Some((t0 + Duration::from_secs(10), Cutoff::HeadTimeout))
        );
    }

    #[test]
    fn interim_responses_and_upgrades() {
        let t0 = Instant::now();
        let mut g = HeadGuard::new(limits(), t0);
        g.on_read(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", t0)
            .unwrap();
        g.on_write(b"HTTP/1.1 100 Continue\r\n\r\n", t0);
        assert_eq!(
            g.on_read(b"{\"a body\": 1}", t0),
            Ok(()),
            "the body follows"
        );
        assert_eq!(g.deadline(), None);
        g.on_write(b"HTTP/1.1 101 Switching Protocols\r\n", t0);
        assert_eq!(
            g.on_read(&[0x81, 0x85, 0, 1, 2, 3, 4], t0 + Duration::from_secs(999)),
            Ok(())
        );
        g.on_write(b"frame", t0);
        assert_eq!(
            g.deadline(),
            None,
            "an upgraded connection has no limits of ours"
        );
    }

    #[test]
    fn request_lines() {
        let t0 = Instant::now();
        let check = |line: &[u8]| {
            let mut g = HeadGuard::new(limits(), t0);
            g.on_read(line, t0)
        };
        for good in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"GET /a?b=c%20d HTTP/1.1\n",
            b"\r\nOPTIONS * HTTP/1.1\r\n",
            b"GET http://x/y HTTP/1.0\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n",
        ] {
            assert_eq!(check(good), Ok(()), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"GET  / HTTP/1.1\r\n"[..],
            b"GET /a b HTTP/1.1\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"GET /\tx HTTP/1.1\r\n",
            b"GET /\x01 HTTP/1.1\r\n",
            b"GET /\r\n",
            b" GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(
                check(bad),
                Err(Cutoff::BadRequestLine),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Header lines are Pingora's to parse; only the request line is checked here.
        assert_eq!(check(b"GET / HTTP/1.1\r\nX:  a  b\r\n\r\n"), Ok(()));
    }

    #[test]
    fn cutoffs_answer_in_http() {
        assert_eq!(Cutoff::Idle.response(), None);
        for c in [
            Cutoff::HeadTimeout,
            Cutoff::HeadTooLarge,
            Cutoff::BadRequestLine,
        ] {
            let r = std::str::from_utf8(c.response().unwrap()).unwrap();
            let (head, body) = r.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{r}");
            assert!(head.contains("connection: close"));
        }
    }

    #[test]
    fn line_jumps_agree_with_the_byte_by_byte_scan() {
        // Heads of every kind (complete, split anywhere, bare LF, CR runs, lines that look
        // empty but are not, junk, oversized) fed in random chunks to both scans: every read's
        // answer and the phase after it are the same.
        let pieces: [&[u8]; 14] = [
            b"GET / HTTP/1.1\r\n",
            b"Host: a\r\n",
            b"\r\n",
            b"\n",
            b"\r",
            b"\r\r\n",
            b"X: y\n",
            b" \r\n",
            b"GET  / HTTP/1.1\r\n",
            b"\x01",
            b"aaaaaaaaaaaaaaaaaaaa",
            b"\r\n\r\n",
            b"POST /x HTTP/1.1\n",
            b"\n\n",
        ];
        let t0 = Instant::now();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..next(8) {
                input.extend_from_slice(pieces[next(pieces.len() as u64) as usize]);
            }
            let mut fast = HeadGuard::new(limits(), t0);
            let mut slow = HeadGuard::new(limits(), t0);
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + next(rest.len() as u64) as usize;
                let (chunk, after) = rest.split_at(n);
                let (a, b) = (fast.on_read(chunk, t0), slow.scan(chunk, t0, false));
                assert_eq!(
                    a,
                    b,
                    "{:?} in chunks, at {chunk:?}",
                    String::from_utf8_lossy(&input)
                );
                let seen = |p: Phase| match p {
                    Phase::Head {
                        since,
                        bytes,
                        started,
                        line,
                        request_line,
                    } => Phase::Head {
                        since,
                        bytes,
                        started,
                        line: usize::from(line > 0),
                        request_line,
                    },
                    other => other,
                };
                let text = String::from_utf8_lossy(&input);
                assert_eq!(seen(fast.phase), seen(slow.phase), "{text:?}");
                if a.is_err() {
                    break;
                }
                rest = after;
            }
        }
    }
}
