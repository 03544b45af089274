/* wire: the frame and TLV codec of docs/protocol.md: bytes in, frames and fields out, and
 * back. Pure code: must never do I/O, allocate, or trust a length it has not checked. */
#ifndef LINX_WIRE_H
#define LINX_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_HDR 4u			/* the u32 length prefix */
#define WIRE_CAP_REQUEST (64u << 20)	/* first frame on a session channel */
#define WIRE_CAP_COMMAND (1u << 20)	/* later frames Python -> agent */
#define WIRE_CAP_LAUNCHER 4096u		/* frames Python -> launcher */

/* Session channel, Python -> agent. */
enum {
	MSG_SPAWN = 0x0001,
	MSG_ENTER = 0x0002,
	MSG_PROCEED = 0x0010,
	MSG_ABORT = 0x0011,
	MSG_SIGNAL = 0x0012,
	MSG_PTY_WRITE = 0x0013,
	MSG_PTY_WINSIZE = 0x0014,
	MSG_KILL = 0x0015,
};

/* Session channel, agent -> Python. */
enum {
	MSG_SPAWNED = 0x0081,
	MSG_READY = 0x0082,
	MSG_RUNNING = 0x0083,
	MSG_EXITED = 0x0084,
	MSG_SIGNALED = 0x0085,
	MSG_ABORTED = 0x0086,
	MSG_ERROR = 0x0087,
	MSG_NOTICE = 0x0088,
};

/* Launcher channel. */
enum {
	MSG_START_AGENT = 0x0001,
	MSG_AGENT_EXITED = 0x0081,
	MSG_LAUNCH_FAILED = 0x0082,
};

enum wire_status {
	WIRE_OK,	/* a whole frame is there */
	WIRE_SHORT,	/* need more bytes */
	WIRE_TOO_BIG,	/* length above the cap: known from the prefix alone */
	WIRE_MALFORMED,	/* length below 2 */
};

struct wire_frame {
	uint16_t type;
	const uint8_t *fields;	/* points into the caller's buffer */
	size_t fields_len;
	size_t total;		/* bytes the frame occupies, prefix included */
};

/* Looks at the front of buf for one frame whose length may not exceed cap. */
enum wire_status wire_parse_frame(const uint8_t *buf, size_t len, uint32_t cap,
				  struct wire_frame *out);

/* Walks the fields of a frame. */
struct wire_iter {
	const uint8_t *p;
	size_t left;
};

struct wire_field {
	uint16_t tag;
	const uint8_t *val;
	uint32_t size;
};

void wire_iter_init(struct wire_iter *it, const struct wire_frame *f);
/* 1: a field was read; 0: clean end; -1: truncated field. */
int wire_next(struct wire_iter *it, struct wire_field *out);

/* Field values; -1 if the size does not match the kind. */
int wire_u32(const struct wire_field *f, uint32_t *out);
int wire_u64(const struct wire_field *f, uint64_t *out);

uint16_t wire_get_u16(const uint8_t *p);
uint32_t wire_get_u32(const uint8_t *p);
uint64_t wire_get_u64(const uint8_t *p);

/* Encoder for outgoing frames, which are all small: a fixed buffer; overflow is sticky
 * and checked once by wire_end. */
#define WIRE_OUT_MAX 512u

struct wire_out {
	uint8_t buf[WIRE_OUT_MAX];
	size_t len;
	int overflow;
};

void wire_begin(struct wire_out *o, uint16_t type);
void wire_put_u32(struct wire_out *o, uint16_t tag, uint32_t v);
void wire_put_u64(struct wire_out *o, uint16_t tag, uint64_t v);
void wire_put_bytes(struct wire_out *o, uint16_t tag, const void *v, size_t n);
/* Fills in the length prefix; -1 on overflow. */
int wire_end(struct wire_out *o);

#endif
