/* report: the records the child writes to the agent over the report pipe (ready, error,
 * exec; see docs/protocol.md) and their parser. Writers run between clone and execve, so
 * they must never allocate or touch anything but their arguments and the stack. */
#ifndef LINX_REPORT_H
#define LINX_REPORT_H

#include <stddef.h>
#include <stdint.h>

#define REPORT_READY 'R'	/* + i32 child pid */
#define REPORT_ERROR 'X'	/* + i32 errno, u8 stage length, stage */
#define REPORT_EXEC 'E'
#define REPORT_MAX (1 + 4 + 1 + 255)

struct report_rec {
	char kind;
	int32_t value;		/* pid for ready, errno for error */
	char stage[256];	/* error only, NUL-terminated */
};

/* Each record goes out in one write(2) below PIPE_BUF, so it arrives whole.
 * Return 0 or an errno. */
int report_ready(int fd, int32_t pid);
int report_error(int fd, const char *stage, int err);
int report_exec(int fd);

/* Parses one record at the front of buf: bytes consumed, 0 if incomplete, -1 if the
 * kind byte is unknown. */
int report_parse(const uint8_t *buf, size_t len, struct report_rec *out);

#endif
