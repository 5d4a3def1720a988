//! Generic netlink, only as much as creating and deleting vDPA devices
//! needs: resolve a family by name, send one request, wait for its ack.
//!
//! The encoding is written out here rather than taken from a crate: three
//! fixed headers and a few string attributes (include/uapi/linux/netlink.h,
//! genetlink.h), all in host byte order and padded to 4 bytes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::{errstr, last_err};

/// `struct nlmsghdr`: length, type, flags, sequence number, port id.
const NLMSG_HDRLEN: usize = 16;
/// `struct genlmsghdr`: command, version, reserved.
const GENL_HDRLEN: usize = 4;
/// `struct nlattr`: length, type.
const NLA_HDRLEN: usize = 4;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;

/// The controller family, which resolves family names to ids.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One request: a generic netlink command with attributes.
pub struct Request {
    buf: Vec<u8>,
}

impl Request {
    pub fn new(family: u16, cmd: u8, version: u8) -> Request {
        let mut buf = vec![0u8; NLMSG_HDRLEN + GENL_HDRLEN];
        buf[4..6].copy_from_slice(&family.to_ne_bytes());
        buf[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf[NLMSG_HDRLEN] = cmd;
        buf[NLMSG_HDRLEN + 1] = version;
        Request { buf }
    }

    /// A NUL-terminated string attribute (NLA_NUL_STRING / NLA_STRING).
    pub fn string(mut self, kind: u16, value: &str) -> Request {
        let len = NLA_HDRLEN + value.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// A reply message: its type and its attributes (after the genl header).
struct Reply {
    kind: u16,
    payload: Vec<u8>,
}

/// Attributes of a generic netlink payload: (type, value).
fn attributes(payload: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = payload.get(GENL_HDRLEN..).unwrap_or_default();
    while rest.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        // the top bits of the type are the nested / byte-order flags
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < NLA_HDRLEN || len > rest.len() {
            break;
        }
        out.push((kind, &rest[NLA_HDRLEN..len]));
        rest = &rest[align4(len).min(rest.len())..];
    }
    out
}

/// A generic netlink socket.
pub struct Genl {
    fd: OwnedFd,
    seq: u32,
}

impl Genl {
    pub fn open() -> Result<Genl, String> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(last_err("socket(NETLINK_GENERIC)"));
        }
        // SAFETY: socket(2) returned a new fd that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Genl { fd, seq: 0 })
    }

    /// Send `req` and read replies up to its ack; a negative ack is the
    /// error, named `what`.
    fn transact(&mut self, what: &str, req: Request) -> Result<Vec<Reply>, String> {
        self.seq += 1;
        let seq = self.seq;
        let bytes = req.finish(seq);
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: the buffer and the kernel's address are ours and sized.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(last_err(&format!("{what}: sendto")));
        }
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            // SAFETY: the kernel writes at most buf.len() bytes into buf.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(last_err(&format!("{what}: recv")));
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let rseq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(format!("{what}: malformed netlink reply (length {len})"));
                }
                let body = &rest[NLMSG_HDRLEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                if rseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                        return match code {
                            Some(0) => Ok(replies),
                            Some(c) => Err(errstr(what, &io::Error::from_raw_os_error(-c))),
                            None => Err(format!("{what}: truncated netlink error")),
                        };
                    }
                    NLMSG_DONE => return Ok(replies),
                    _ => replies.push(Reply {
                        kind,
                        payload: body.to_vec(),
                    }),
                }
            }
        }
    }

    /// The id of a generic netlink family; `ENOENT` when its module is not loaded.
    pub fn family(&mut self, name: &str) -> Result<u16, String> {
        let req =
            Request::new(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1).string(CTRL_ATTR_FAMILY_NAME, name);
        let replies = self.transact(&format!("generic netlink family {name:?}"), req)?;
        replies
            .iter()
            .filter(|r| r.kind == GENL_ID_CTRL)
            .flat_map(|r| {
                attributes(&r.payload)
                    .into_iter()
                    .map(|(k, v)| (k, v.to_vec()))
                    .collect::<Vec<_>>()
            })
            .find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
            .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
            .ok_or_else(|| {
                format!("generic netlink family {name:?}: no id in the controller's reply")
            })
    }

    /// Send a request that answers with an ack only.
    pub fn command(&mut self, what: &str, req: Request) -> Result<(), String> {
        self.transact(what, req).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let b = Request::new(0x1c, 3, 1)
            .string(2, "vdpasim_net")
            .string(4, "v0")
            .finish(7);
        // 16 header + 4 genl + (4 + 12 -> 16) + (4 + 3 -> 8)
        assert_eq!(b.len(), 44);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 44);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x1c);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        assert_eq!((b[16], b[17]), (3, 1));
        assert_eq!(
            u16::from_ne_bytes([b[20], b[21]]),
            16,
            "attribute length excludes padding"
        );
        assert_eq!(&b[24..36], b"vdpasim_net\0");
        assert_eq!(u16::from_ne_bytes([b[38], b[39]]), 4);
        assert_eq!(&b[40..43], b"v0\0");
    }

    #[test]
    fn attributes_skip_padding() {
        let b = Request::new(0x10, 1, 1)
            .string(2, "vdpa")
            .string(1, "x")
            .finish(1);
        let attrs = attributes(&b[NLMSG_HDRLEN..]);
        assert_eq!(attrs, vec![(2, &b"vdpa\0"[..]), (1, &b"x\0"[..])]);
    }
}
