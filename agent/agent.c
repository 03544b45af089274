/* agent: one session's event loop (fd 3 <-> one child): request, checkpoint, commands,
 * exec report, exit status, orphan policy. Must never block on Python, write a frame out
 * of the protocol's order, or leave a child unreaped. */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chan.h"
#include "report.h"
#include "request.h"
#include "spawn.h"
#include "util.h"
#include "wire.h"

#define MAX_BUFFERED_SIGNALS 65536u

enum phase {
	PH_REQUEST,	/* reading the first frame */
	PH_STARTING,	/* SPAWNED sent; waiting for the child's ready record */
	PH_PARKED,	/* READY sent; the child waits on the release pipe */
	PH_RELEASED,	/* released; reading the report pipe to EOF */
	PH_RUNNING,	/* RUNNING sent; waiting for the exit */
};

struct session {
	struct chan ch;
	enum phase phase;
	struct spawn_req req;
	int *passed;		/* fds received with the request */
	size_t npassed;
	struct child child;
	uint8_t rep[2 * REPORT_MAX];	/* report pipe bytes not yet acted on */
	size_t rep_len;
	int abort_pending;
	int released_early;	/* auto_proceed: released at clone, never parked */
	uint32_t *sigs;		/* buffered SIGNALs, arrival order */
	size_t nsigs, sigcap;
	int kill_unbuffered;	/* a SIGKILL past the buffer's end: kept, it goes out last */
	int unread;		/* whole commands may wait in ch's buffer (on_frames) */
	int mute;		/* nothing more can go to Python: it stopped reading (EPIPE,
				 * ECONNRESET on a write; commands it sent before may still wait
				 * to be read), or the channel is gone */
	int peer_gone;		/* the channel is at its end (EOF, or given up): every command
				 * Python sent has been acted on, the orphan policy is next */
	int done;		/* terminal frame sent (or nobody to send it to) */
	int status;		/* exit status: non-zero when the channel broke on our side,
				 * so the launcher reports AGENT_EXITED and Python is not left
				 * waiting for a terminal frame that never comes */
};

/* ---- frames to Python ---- */

/* Frames Python does not need yet, held while the agent holds (below); past this much
 * they go anyway. */
#define HOLD_MAX (2 * WIRE_OUT_MAX)

/* While the agent waits only on its own child's next report (the ready record right
 * after clone; the exec outcome of a child released at clone time), what it has to say
 * will be followed within moments by more: hold it. Everywhere else, Python may be
 * waiting for it. */
static int holding(const struct session *s)
{
	return s->phase == PH_STARTING || (s->phase == PH_RELEASED && s->released_early);
}

/* Queued frames that should be on their way: true after a flush means the socket would
 * not take them (Python is not reading), and agent_main reads no more commands until it
 * does. */
static int must_send(const struct session *s)
{
	return s->ch.outlen && !s->mute && (!holding(s) || s->ch.outlen > HOLD_MAX);
}

/* A send failed. EPIPE or ECONNRESET: Python reads no more, but what it sent before it
 * closed is still in the socket, to be acted on as if it were there: nothing goes out
 * from here on, and the commands are read to EOF (then the orphan policy). Any other
 * error is our side of the channel failing: it is given up at once, with a line and exit
 * status 1, so that the launcher's AGENT_EXITED tells Python, which would otherwise wait
 * for a terminal frame that never comes. */
static void broken(struct session *s, const char *stage, int err)
{
	s->mute = 1;
	s->ch.outlen = 0;
	if (err != EPIPE && err != ECONNRESET) {
		diag(stage, err);
		s->status = 1;
		s->peer_gone = 1;
	}
}

/* Never waits: what the socket does not take stays queued (chan_flush). */
static void flush(struct session *s)
{
	int err;

	if (!s->mute && (err = chan_flush(&s->ch)))
		broken(s, "send", err);
}

/* Frames are queued until the loop is about to wait for Python or for the workload (see
 * holding()), so the ones a spawn produces in quick succession reach Python in one write:
 * one wake-up of its reactor instead of three. */
static void send_frame(struct session *s, struct wire_out *o)
{
	if (s->mute)
		return;
	if (wire_end(o) < 0) {
		diag("encode", EOVERFLOW);
		return;
	}
	/* a frame dropped would break the protocol's order: better give the channel up
	 * (status 1: the launcher's AGENT_EXITED tells Python) */
	if (chan_queue(&s->ch, o->buf, o->len))
		broken(s, "send queue", ENOMEM);
}

static void send_empty(struct session *s, uint16_t type)
{
	struct wire_out o;

	wire_begin(&o, type);
	send_frame(s, &o);
}

static void send_u32s(struct session *s, uint16_t type, int n, uint32_t a, uint32_t b)
{
	struct wire_out o;

	wire_begin(&o, type);
	wire_put_u32(&o, 1, a);
	if (n > 1)
		wire_put_u32(&o, 2, b);
	send_frame(s, &o);
}

static void send_stage(struct session *s, uint16_t type, const char *stage, int err)
{
	struct wire_out o;

	wire_begin(&o, type);
	wire_put_bytes(&o, 1, stage, strlen(stage));
	wire_put_u32(&o, 2, (uint32_t)err);
	send_frame(s, &o);
}

static void notice(struct session *s, const char *stage, int err)
{
	send_stage(s, MSG_NOTICE, stage, err);
}

/* The one way to end a session with an error: the child goes first, so no workload
 * outlives an ERROR. */
static void fail(struct session *s, const char *stage, int err)
{
	child_discard(&s->child);
	send_stage(s, MSG_ERROR, stage, err);
	s->done = 1;
}

static void finish(struct session *s, uint16_t type, int n, uint32_t v)
{
	if (n)
		send_u32s(s, type, 1, v, 0);
	else
		send_empty(s, type);
	s->done = 1;
}

/* ---- the child's lifecycle ---- */

static void close_passed(struct session *s)
{
	for (size_t i = 0; i < s->npassed; i++)
		close(s->passed[i]);
	free(s->passed);
	s->passed = NULL;
	s->npassed = 0;
}

static void deliver(struct session *s, uint32_t signum)
{
	int err = child_signal(&s->child, (int)signum);

	if (err)
		notice(s, "signal", err);
}

/* One byte on the release pipe lets the child past the checkpoint; the pipe is then done
 * with (its EOF would mean abort). Returns 0 or the write's errno. */
static int write_release(struct session *s)
{
	int err = write_all(s->child.release_wr, "G", 1);

	close_fd(&s->child.release_wr);
	return err;
}

static void release(struct session *s)
{
	int err = write_release(s);

	if (err) {
		fail(s, "exec_outcome", err);
		return;
	}
	s->phase = PH_RELEASED;
}

static void do_abort(struct session *s)
{
	/* EOF on the release pipe makes the child _exit without running anything; the
	 * SIGKILL is for a child that cannot get there (stopped, say), so abort never hangs */
	close_fd(&s->child.release_wr);
	child_discard(&s->child);
	finish(s, MSG_ABORTED, 0, 0);
}

static void on_ready(struct session *s, int32_t child_pid)
{
	s->phase = PH_PARKED;
	send_u32s(s, MSG_READY, 2, (uint32_t)s->child.pid, (uint32_t)child_pid);
	if (s->released_early) {
		s->phase = PH_RELEASED;
		if (s->abort_pending)
			notice(s, "abort", EBUSY);
	} else if (s->abort_pending) {
		do_abort(s);
	}
}

/* The first error record among what the child wrote, if any: the step that failed. */
static int child_error(const struct session *s, struct report_rec *rec)
{
	size_t off = 0;

	while (off < s->rep_len) {
		int n = report_parse(s->rep + off, s->rep_len - off, rec);
		if (n <= 0)
			return 0;
		if (rec->kind == REPORT_ERROR)
			return 1;
		off += (size_t)n;
	}
	return 0;
}

/* Kills the child, then reads all it wrote: its pipe reaches EOF as soon as it is dead.
 * Returns 0 or the read's errno. */
static int read_report_to_eof(struct session *s)
{
	child_kill(&s->child);
	while (s->rep_len < sizeof(s->rep)) {
		ssize_t n = read_some(s->child.report_rd, s->rep + s->rep_len,
				      sizeof(s->rep) - s->rep_len);
		if (n <= 0)
			return (int)-n;
		s->rep_len += (size_t)n;
	}
	return 0;
}

/* auto_proceed: the release byte goes in right after the clone (and the maps), so the
 * child finds it waiting and never blocks at the checkpoint: two wake-ups fewer on the
 * spawn path. The workload is committed to run from here; an ABORT is too late.
 * The byte finds no reader (EPIPE) when the child already failed before its ready record
 * (sethostname, say): its error record is then in the report pipe, and it is what Python
 * must hear, not our EPIPE. */
static void release_early(struct session *s)
{
	struct report_rec rec;
	int err = write_release(s);

	if (!err) {
		s->released_early = 1;
		return;
	}
	int rerr = read_report_to_eof(s);
	if (rerr)
		fail(s, "ready_frame", rerr);
	else if (child_error(s, &rec))
		fail(s, rec.stage, rec.value);
	else
		fail(s, "exec_outcome", err);
}

/* The ready record (or the child's error before it). */
static void parse_ready(struct session *s, int eof)
{
	struct report_rec rec;
	int n = report_parse(s->rep, s->rep_len, &rec);

	if (n == 0) {
		if (eof)
			fail(s, "ready_frame", EIO);
		return;
	}
	if (n > 0 && rec.kind == REPORT_ERROR) {
		fail(s, rec.stage, rec.value);
		return;
	}
	if (n < 0 || rec.kind != REPORT_READY) {
		fail(s, "malformed_ready", EPROTO);
		return;
	}
	memmove(s->rep, s->rep + n, s->rep_len - (size_t)n);
	s->rep_len -= (size_t)n;
	on_ready(s, rec.value);
}

/* At EOF after release: 'E' alone means the child reached execve, and it worked unless the
 * child died on its way in (child_exec_took); any error record wins (execve itself fails
 * after 'E'); anything else means the child died on the way. */
static void exec_outcome(struct session *s)
{
	struct report_rec rec;
	size_t off = 0;
	int saw_exec = 0, bad = 0;

	if (child_error(s, &rec)) {
		s->rep_len = 0;
		fail(s, rec.stage, rec.value);
		return;
	}
	while (off < s->rep_len) {
		int n = report_parse(s->rep + off, s->rep_len - off, &rec);
		if (n <= 0 || rec.kind == REPORT_READY) {
			bad = 1;
			break;
		}
		if (rec.kind == REPORT_EXEC)
			saw_exec = 1;
		off += (size_t)n;
	}
	s->rep_len = 0;
	if (bad || !saw_exec) {
		fail(s, "exec_outcome", bad ? EPROTO : EIO);
		return;
	}
	if (!child_exec_took(&s->child)) {
		/* killed between its 'E' and execve: it never ran, so no RUNNING */
		fail(s, "exec_outcome", EIO);
		return;
	}
	close_fd(&s->child.report_rd);
	s->phase = PH_RUNNING;
	send_empty(s, MSG_RUNNING);
	for (size_t i = 0; i < s->nsigs; i++)
		deliver(s, s->sigs[i]);
	s->nsigs = 0;
	if (s->kill_unbuffered)
		deliver(s, SIGKILL);
	s->kill_unbuffered = 0;
}

/* A vforked child has exec'd or exited by the time clone returns, so all it will ever
 * write is in the pipe already; only its CLOEXEC write end may close a moment later.
 * Rather than wait for that EOF, read once (non-blocking: a pipe read takes every buffered
 * byte up to the count, and the child writes at most a ready record, 'E' and one error
 * record) and treat what came as if EOF followed it: the same rules as the other path. */
static void vforked_outcome(struct session *s)
{
	ssize_t n = read_some(s->child.report_rd, s->rep, sizeof(s->rep));

	if (n == -EAGAIN)
		n = 0;
	if (n < 0) {
		fail(s, "ready_frame", (int)-n);
		return;
	}
	s->rep_len = (size_t)n;
	s->released_early = 1;
	parse_ready(s, 1);
	if (!s->done)
		exec_outcome(s);
}

static void on_report(struct session *s)
{
	if (s->rep_len == sizeof(s->rep)) {
		fail(s, s->phase == PH_STARTING ? "malformed_ready" : "exec_outcome", EPROTO);
		return;
	}
	ssize_t n = read_some(s->child.report_rd, s->rep + s->rep_len, sizeof(s->rep) - s->rep_len);
	const char *stage = s->phase == PH_STARTING ? "ready_frame" : "exec_outcome";
	if (n < 0) {
		fail(s, stage, (int)-n);
		return;
	}
	s->rep_len += (size_t)n;
	switch (s->phase) {
	case PH_STARTING:
		parse_ready(s, n == 0);
		break;
	case PH_PARKED:
		/* the child writes nothing while parked; EOF means it was killed */
		if (n == 0)
			fail(s, "exec_outcome", EIO);
		break;
	case PH_RELEASED:
		if (n == 0)
			exec_outcome(s);
		break;
	default:
		break;
	}
}

static void on_exit_ready(struct session *s)
{
	int st, err = child_reap_exited(&s->child, &st);

	/* without a status there is no outcome to report, and EXITED(0) would be a lie */
	if (err)
		fail(s, "waitpid", err);
	else if (WIFSIGNALED(st))
		finish(s, MSG_SIGNALED, 1, (uint32_t)WTERMSIG(st));
	else
		finish(s, MSG_EXITED, 1, (uint32_t)WEXITSTATUS(st));
}

/* Only an optimisation (spawn_hold_mnt_ns): failing it changes no outcome, so it is a
 * NOTICE; ESRCH or ENOENT is a child that has already exited, which needs no holding. */
static void hold_mnt_ns(struct session *s)
{
	if (!(s->req.namespaces & CLONE_NEWNS))
		return;
	int err = spawn_hold_mnt_ns(&s->child);
	if (err && err != ESRCH && err != ENOENT)
		notice(s, "hold_mnt_ns", err);
}

/* ---- frames from Python ---- */

/* The first frame. ENTER is where enter mode plugs in: an enter.c that decodes it, opens
 * /proc/<pid>/ns/<type>, setns and forks, filling the same struct child; everything from
 * SPAWNED on is shared. */
static void on_request(struct session *s, const struct wire_frame *f)
{
	struct fail fl;

	if (s->ch.fds_lost) {
		/* the request was fine; we could not take its fds (as the launcher reports it) */
		fail(s, "recvmsg", EMFILE);
		return;
	}
	if (f->type != MSG_SPAWN || s->ch.truncated) {
		fail(s, "malformed_request", EINVAL);
		return;
	}
	s->npassed = s->ch.nfds;
	if (s->npassed) {
		s->passed = calloc(s->npassed, sizeof(int));
		if (!s->passed) {
			fail(s, "request_too_big", ENOMEM);
			return;
		}
		for (size_t i = 0; i < s->npassed; i++)
			s->passed[i] = chan_take_fd(&s->ch);
	}
	int rc = request_decode_spawn(f, s->npassed, &s->req);
	if (rc) {
		fail(s, rc == ENOMEM ? "request_too_big" : "malformed_request", rc);
		return;
	}
	if (spawn_start(&s->req, s->passed, s->ch.fd, &s->child, &fl)) {
		fail(s, fl.stage, fl.err);
		return;
	}
	/* the child has its copies; ours would keep pipes open past the workload */
	close_passed(s);
	hold_mnt_ns(s);
	s->phase = PH_STARTING;
	send_u32s(s, MSG_SPAWNED, 2, (uint32_t)s->child.pid, (uint32_t)getpid());
	if (s->child.vforked)
		vforked_outcome(s);
	else if (spawn_write_maps(&s->req, &s->child, &fl))
		fail(s, fl.stage, fl.err);
	else if (s->req.auto_proceed)
		release_early(s);
}

static void buffer_signal(struct session *s, uint32_t signum)
{
	if (s->nsigs == s->sigcap) {
		size_t ncap = s->sigcap ? s->sigcap * 2 : 8;
		uint32_t *ns = ncap <= MAX_BUFFERED_SIGNALS ? realloc(s->sigs, ncap * sizeof(*ns)) : NULL;
		if (!ns) {
			/* a dropped signal is noticed; a SIGKILL is never dropped: it would have
			 * ended the workload whatever came after it, so it can wait at the end */
			if (signum == SIGKILL)
				s->kill_unbuffered = 1;
			else
				notice(s, "signal", ncap <= MAX_BUFFERED_SIGNALS ? ENOMEM : ENOBUFS);
			return;
		}
		s->sigs = ns;
		s->sigcap = ncap;
	}
	s->sigs[s->nsigs++] = signum;
}

/* KILL (close()): the session ends now, whatever its phase. A child not yet released is
 * aborted (at READY if it is not there yet); one released is killed at once, where a
 * SIGNAL would wait for RUNNING: a child stopped or stuck on its way to execve would keep
 * close() waiting for good. Its exec outcome then says how far it got. Before its ready
 * record a released child gets the SIGKILL at RUNNING as a SIGNAL would: killed there, it
 * would look like a child that broke (ready_frame), and it is on its way already. */
static void end_now(struct session *s)
{
	int err;

	switch (s->phase) {
	case PH_STARTING:
		if (s->released_early)
			buffer_signal(s, SIGKILL);
		else
			s->abort_pending = 1;
		break;
	case PH_PARKED:
		do_abort(s);
		break;
	case PH_RELEASED:
		if ((err = child_signal(&s->child, SIGKILL)) && err != ESRCH)
			notice(s, "kill", err);
		break;
	case PH_RUNNING:
		deliver(s, SIGKILL);
		break;
	default:
		break;
	}
}

static void on_command(struct session *s, const struct wire_frame *f)
{
	uint32_t signum;

	switch (f->type) {
	case MSG_PROCEED:
		if (request_decode_empty(f))
			notice(s, "malformed_command", EINVAL);
		else if (s->phase == PH_STARTING)
			notice(s, "proceed", EAGAIN);
		else if (s->phase == PH_PARKED)
			release(s);
		break;
	case MSG_ABORT:
		if (request_decode_empty(f))
			notice(s, "malformed_command", EINVAL);
		else if (s->phase == PH_STARTING)
			s->abort_pending = 1;
		else if (s->phase == PH_PARKED)
			do_abort(s);
		else
			notice(s, "abort", EBUSY);
		break;
	case MSG_SIGNAL:
		if (request_decode_signal(f, &signum))
			notice(s, "malformed_command", EINVAL);
		else if (s->phase == PH_RUNNING)
			deliver(s, signum);
		else
			buffer_signal(s, signum);
		break;
	case MSG_KILL:
		if (request_decode_empty(f))
			notice(s, "malformed_command", EINVAL);
		else
			end_now(s);
		break;
	default:
		notice(s, "malformed_command", EINVAL);
		break;
	}
}

/* Acts on the whole frames in ch's buffer, up to the first that must wait (unread). */
static void on_frames(struct session *s)
{
	s->unread = 0;
	while (!s->done) {
		struct wire_frame f;
		/* each command may add a frame: none is taken while frames wait for the
		 * socket, so what a session queues stays bounded (agent_main) */
		if (must_send(s)) {
			s->unread = 1;
			break;
		}
		uint32_t cap = s->phase == PH_REQUEST ? WIRE_CAP_REQUEST : WIRE_CAP_COMMAND;
		const char *too_big = s->phase == PH_REQUEST ? "request_too_big" : "command_too_big";
		enum wire_status st = chan_frame(&s->ch, cap, &f);
		if (st == WIRE_SHORT)
			break;
		if (st == WIRE_TOO_BIG) {
			fail(s, too_big, EMSGSIZE);
			return;
		}
		if (st == WIRE_MALFORMED) {
			if (s->phase == PH_REQUEST) {
				fail(s, "malformed_request", EINVAL);
				return;
			}
			/* length 0 or 1: still delimited, so skip it and stay in sync */
			size_t total = WIRE_HDR + wire_get_u32(s->ch.buf);
			if (s->ch.len < total)
				break;
			notice(s, "malformed_command", EINVAL);
			chan_consume(&s->ch, total);
			continue;
		}
		if (s->phase == PH_REQUEST) {
			on_request(s, &f);
			chan_consume(&s->ch, f.total);
			chan_shrink(&s->ch);
		} else {
			on_command(s, &f);
			chan_consume(&s->ch, f.total);
		}
	}
	/* commands take no fds; a command that brought some gets them closed */
	if ((s->ch.truncated || s->ch.fds_lost) && s->phase != PH_REQUEST && !s->done) {
		notice(s, "malformed_command", EINVAL);
		s->ch.truncated = s->ch.fds_lost = 0;
	}
	if (s->phase != PH_REQUEST)
		chan_close_fds(&s->ch);
}

static void on_channel(struct session *s)
{
	uint32_t cap = s->phase == PH_REQUEST ? WIRE_CAP_REQUEST : WIRE_CAP_COMMAND;
	const char *too_big = s->phase == PH_REQUEST ? "request_too_big" : "command_too_big";
	long n = chan_fill(&s->ch, cap);

	if (n == -EAGAIN)
		return;
	if (n == -ENOMEM) {
		fail(s, too_big, ENOMEM);
		return;
	}
	if (n <= 0) {
		/* EOF, or the connection broke: Python is gone either way, and whatever it
		 * sent before has been acted on (the kernel gives queued bytes before the
		 * EOF or the ECONNRESET) */
		if (n < 0 && n != -ECONNRESET) {
			diag("recvmsg", (int)-n);
			s->status = 1;
		}
		s->mute = 1;
		s->peer_gone = 1;
		return;
	}
	on_frames(s);
}

/* ---- orphan policy ---- */

/* Milliseconds on CLOCK_MONOTONIC; UINT64_MAX (every grace over) if it cannot be read. */
static uint64_t monotonic_ms(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0) {
		diag("orphan clock_gettime", errno);
		return UINT64_MAX;
	}
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Whether the child exits within ms. poll takes at most INT_MAX ms (under 25 days), and
 * a grace may be longer (u64 on the wire): it is waited in pieces against a deadline,
 * which an EINTR does not move either. */
static int exits_within(const struct child *c, uint64_t ms)
{
	uint64_t now = monotonic_ms();
	uint64_t deadline = ms > UINT64_MAX - now ? UINT64_MAX : now + ms;
	struct pollfd p = { .fd = c->pidfd, .events = POLLIN };

	for (;;) {
		uint64_t left = deadline - now;
		int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r > 0)
			return 1;
		if (r < 0 && errno != EINTR) {
			diag("orphan poll", errno);
			return 0;
		}
		now = monotonic_ms();
		if (now >= deadline)
			return 0;
	}
}

/* Let past the checkpoint (PROCEED, or auto_proceed's early release byte): committed to
 * run, even if its exec outcome is not in yet. */
static int released(const struct session *s)
{
	return s->phase == PH_RELEASED || (s->phase == PH_STARTING && s->released_early);
}

/* A lingering released child's exec outcome, as agent_main would have read it with
 * Python there: RUNNING is then when the SIGNALs Python sent before it closed go out,
 * in order (none if the exec failed: fail() has discarded the child). Only the child is
 * waited on: it is past the checkpoint, so its report pipe reaches EOF at its execve or
 * its exit. */
static void await_exec_outcome(struct session *s)
{
	while (!s->done && s->phase != PH_RUNNING) {
		struct pollfd p = { .fd = s->child.report_rd, .events = POLLIN };
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			diag("orphan poll", errno);
			fail(s, "poll", errno);
			return;
		}
		on_report(s);
	}
}

static void orphan(struct session *s)
{
	if (s->phase == PH_REQUEST) {
		s->done = 1;
		return;
	}
	/* linger keeps a released workload whose 'E' and EOF have not reached us yet, as it
	 * keeps a running one: whether Python's EOF came before or after them is timing */
	if (s->phase != PH_RUNNING && !(s->req.orphan_linger && released(s))) {
		child_discard(&s->child);
		s->done = 1;
		return;
	}
	let_go_of_stderr();
	await_exec_outcome(s);
	if (s->done)
		return;
	s->done = 1;
	if (!s->req.orphan_linger) {
		int err;

		/* SIGCONT so a stopped workload gets to act on the SIGTERM within the grace */
		if ((err = child_signal(&s->child, SIGTERM)) && err != ESRCH)
			diag("orphan SIGTERM", err);
		if ((err = child_signal(&s->child, SIGCONT)) && err != ESRCH)
			diag("orphan SIGCONT", err);
		if (!exits_within(&s->child, s->req.orphan_grace_ms))
			child_kill(&s->child);
	}
	int st, err = child_reap(&s->child, &st);
	if (err)
		diag("orphan waitpid", err);
}

/* The terminal frame, and any before it, once nothing is left to watch: waiting for
 * Python here delays only our own exit. */
static void drain(struct session *s)
{
	while (!s->mute && s->ch.outlen) {
		flush(s);
		if (s->mute || !s->ch.outlen)
			break;
		struct pollfd p = { .fd = s->ch.fd, .events = POLLOUT };
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			broken(s, "poll", errno);
	}
}

int agent_main(int ctl_fd)
{
	struct session s;

	memset(&s, 0, sizeof(s));
	chan_init(&s.ch, ctl_fd);
	s.child = (struct child)CHILD_NONE;

	while (!s.done) {
		/* a flush that finds Python gone (EPIPE) only mutes the session: the commands
		 * it sent before closing are read and acted on up to the EOF, and only then
		 * does the orphan policy apply (peer_gone) */
		if (must_send(&s))
			flush(&s);
		if (s.peer_gone) {
			orphan(&s);
			break;
		}
		/* Python is not reading: read no command from it either (backpressure) until
		 * the socket takes our frames, but go on watching the child, so it is reaped
		 * and its outcome queued whatever Python does */
		int backed_up = must_send(&s);
		if (!backed_up && s.unread) {
			on_frames(&s);
			continue;
		}
		struct pollfd p[3];
		int n = 0, ich, irep = -1, ipid = -1;
		ich = n;
		p[n++] = (struct pollfd){ .fd = s.ch.fd, .events = backed_up ? POLLOUT : POLLIN };
		if (s.child.report_rd >= 0 && s.phase != PH_RUNNING) {
			irep = n;
			p[n++] = (struct pollfd){ .fd = s.child.report_rd, .events = POLLIN };
		}
		if (s.phase == PH_RUNNING) {
			ipid = n;
			p[n++] = (struct pollfd){ .fd = s.child.pidfd, .events = POLLIN };
		}
		if (poll(p, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			fail(&s, "poll", errno);
			break;
		}
		/* report pipe before the exit: it closes before the child is a zombie */
		if (irep >= 0 && p[irep].revents)
			on_report(&s);
		if (!s.done && ipid >= 0 && p[ipid].revents)
			on_exit_ready(&s);
		if (!s.done && !backed_up && p[ich].revents)
			on_channel(&s);
	}

	child_discard(&s.child);
	drain(&s);
	child_release_ns(&s.child);	/* after the outcome is out: see spawn_hold_mnt_ns */
	close_passed(&s);
	request_free(&s.req);
	chan_free(&s.ch);
	free(s.sigs);
	return s.status;
}
