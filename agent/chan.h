/* chan: the I/O half of a Python-facing channel (fd 3): accumulates bytes and SCM_RIGHTS
 * fds from recvmsg, hands out whole frames via wire.c, and queues and sends frames. Must
 * never interpret a frame (that is request.c's job) nor block, receiving or sending. */
#ifndef LINX_CHAN_H
#define LINX_CHAN_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

#define CHAN_MAX_FDS 1024u

struct chan {
	int fd;
	uint8_t *buf;
	size_t len, cap;
	int *fds;		/* FIFO of received fds, oldest first */
	size_t nfds, fdcap;
	int truncated;		/* the FIFO overflowed: fds were dropped by us */
	int fds_lost;		/* MSG_CTRUNC: the kernel could not give us every fd sent
				 * (RLIMIT_NOFILE, nearly always: the buffer takes SCM_MAX_FD) */
	int one_frame;		/* reads stop at the end of the frame being read, so the FIFO
				 * holds only the fds that came with it */
	uint8_t *out;		/* frames queued for the peer, not yet taken by the socket */
	size_t outlen, outcap;
};

void chan_init(struct chan *c, int fd);
void chan_free(struct chan *c);

/* One recvmsg(MSG_DONTWAIT). The buffer grows to hold the frame being read, never past
 * frame_cap: a prefix above the cap is caught by chan_frame before any more is read.
 * With one_frame, the read takes no byte past the current frame (its length prefix first).
 * Returns bytes read, 0 at EOF, or -errno (-EAGAIN: nothing to read). */
long chan_fill(struct chan *c, uint32_t frame_cap);

enum wire_status chan_frame(struct chan *c, uint32_t cap, struct wire_frame *f);
void chan_consume(struct chan *c, size_t n);
/* Gives back memory after a large frame. */
void chan_shrink(struct chan *c);

/* Appends bytes (whole frames) to the output queue; 0 or ENOMEM. */
int chan_queue(struct chan *c, const void *buf, size_t len);
/* Sends as much of the queue as the socket takes now, never waiting (a peer that does not
 * read must not stall us); the rest stays queued, to go when POLLOUT says so. Returns 0
 * (all sent, or the socket full) or the send's errno. */
int chan_flush(struct chan *c);

/* The oldest received fd, or -1. */
int chan_take_fd(struct chan *c);
void chan_close_fds(struct chan *c);

#endif
