/* The AUDIT_ARCH value a seccomp filter of the test helpers checks first: a filter that
 * read syscall numbers of another ABI would match the wrong calls. */
#ifndef LINX_TEST_SECCOMP_ARCH_H
#define LINX_TEST_SECCOMP_ARCH_H

#include <linux/audit.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no AUDIT_ARCH for this target"
#endif

#endif
