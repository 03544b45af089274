/* wire: the frame and TLV codec of docs/protocol.md: bytes in, frames and fields out, and
 * back. Pure code: must never do I/O, allocate, or trust a length it has not checked. */
#define _GNU_SOURCE
#include "wire.h"

#include <string.h>

uint16_t wire_get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

uint32_t wire_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t wire_get_u64(const uint8_t *p)
{
	return (uint64_t)wire_get_u32(p) | (uint64_t)wire_get_u32(p + 4) << 32;
}

enum wire_status wire_parse_frame(const uint8_t *buf, size_t len, uint32_t cap,
				  struct wire_frame *out)
{
	if (len < WIRE_HDR)
		return WIRE_SHORT;
	uint32_t flen = wire_get_u32(buf);
	if (flen > cap)
		return WIRE_TOO_BIG;
	if (flen < 2)
		return WIRE_MALFORMED;
	if (len - WIRE_HDR < flen)
		return WIRE_SHORT;
	out->type = wire_get_u16(buf + WIRE_HDR);
	out->fields = buf + WIRE_HDR + 2;
	out->fields_len = flen - 2;
	out->total = WIRE_HDR + (size_t)flen;
	return WIRE_OK;
}

void wire_iter_init(struct wire_iter *it, const struct wire_frame *f)
{
	it->p = f->fields;
	it->left = f->fields_len;
}

int wire_next(struct wire_iter *it, struct wire_field *out)
{
	if (it->left == 0)
		return 0;
	if (it->left < 6)
		return -1;
	uint32_t size = wire_get_u32(it->p + 2);
	if (it->left - 6 < size)
		return -1;
	out->tag = wire_get_u16(it->p);
	out->size = size;
	out->val = it->p + 6;
	it->p += 6 + (size_t)size;
	it->left -= 6 + (size_t)size;
	return 1;
}

int wire_u32(const struct wire_field *f, uint32_t *out)
{
	if (f->size != 4)
		return -1;
	*out = wire_get_u32(f->val);
	return 0;
}

int wire_u64(const struct wire_field *f, uint64_t *out)
{
	if (f->size != 8)
		return -1;
	*out = wire_get_u64(f->val);
	return 0;
}

static void put_raw(struct wire_out *o, const void *p, size_t n)
{
	if (o->overflow || n > WIRE_OUT_MAX - o->len) {
		o->overflow = 1;
		return;
	}
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

static void put_le(struct wire_out *o, uint64_t v, size_t n)
{
	uint8_t b[8];

	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put_raw(o, b, n);
}

void wire_begin(struct wire_out *o, uint16_t type)
{
	o->len = 0;
	o->overflow = 0;
	put_le(o, 0, 4);
	put_le(o, type, 2);
}

void wire_put_bytes(struct wire_out *o, uint16_t tag, const void *v, size_t n)
{
	if (n > UINT32_MAX) {
		o->overflow = 1;
		return;
	}
	put_le(o, tag, 2);
	put_le(o, n, 4);
	put_raw(o, v, n);
}

void wire_put_u32(struct wire_out *o, uint16_t tag, uint32_t v)
{
	put_le(o, tag, 2);
	put_le(o, 4, 4);
	put_le(o, v, 4);
}

void wire_put_u64(struct wire_out *o, uint16_t tag, uint64_t v)
{
	put_le(o, tag, 2);
	put_le(o, 8, 4);
	put_le(o, v, 8);
}

int wire_end(struct wire_out *o)
{
	if (o->overflow)
		return -1;
	uint32_t flen = (uint32_t)(o->len - WIRE_HDR);
	for (int i = 0; i < 4; i++)
		o->buf[i] = (uint8_t)(flen >> (8 * i));
	return 0;
}
