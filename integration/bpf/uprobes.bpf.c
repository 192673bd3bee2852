// SPDX-License-Identifier: GPL-2.0 OR MIT
// heapprof verify --uprobes: exact allocator accounting from outside the process.
//
// Entry probes remember the requested size per thread; return probes record
// the returned address -> {size, stack}. Frees delete the record. realloc has
// its own pending map because glibc's realloc(NULL, n) calls malloc inside.
// The attach cookie says which allocator family a probe belongs to
// (0 = libc, 1 = jemalloc), so one program serves both.
//
// heapprof pads the blocks of small sampled allocations (size + 4096 asked
// of the allocator) and then calls heapprof_sampled_block(inner,
// inner_size, ptr, size); a probe there sets the recorded size of that
// inner block back to what the program asked for, so the counts stay
// exact with the profiler sampling.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define FAMILIES 2
#define MAX_LIVE (1 << 19)

struct alloc_info {
	__u64 size;
	__s64 stack_id;
	__u64 family;
};

struct realloc_args {
	__u64 old_ptr;
	__u64 size;
};

struct memalign_args {
	__u64 memptr;
	__u64 size;
};

/* Counters per family, all updated atomically. */
struct totals {
	__u64 alloc_count;
	__u64 alloc_bytes;
	__u64 free_count;
	__u64 free_bytes;
	/* frees of addresses allocated before the window (or not seen) */
	__u64 free_unknown;
	/* allocations not recorded because the live map was full */
	__u64 dropped;
	__u64 probe_hits;
	__u64 stack_errors;
	/* allocations heapprof padded, and the padding taken off alloc_bytes */
	__u64 padded;
	__u64 padding_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct realloc_args);
} pending_realloc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct memalign_args);
} pending_memalign SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LIVE);
	__type(key, __u64);
	__type(value, struct alloc_info);
} live SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FAMILIES);
	__type(key, __u32);
	__type(value, struct totals);
} totals SEC(".maps");

/* Allocations in the window per (stack, family), freed or not: tells the
 * profiler's own work apart (its stacks run through one marker function). */
struct stack_key {
	__s64 stack_id;
	__u64 family;
};

struct stack_totals {
	__u64 count;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct stack_key);
	__type(value, struct stack_totals);
} alloc_stacks SEC(".maps");

/* Set by the loader: only this process is accounted (the attach is already
 * scoped to it; this is a second guard). */
const volatile __u32 target_tgid = 0;

/* control[0] != 0 while the window is open. The probes are attached before
 * it opens and detached after it closes, so the window is two instants
 * (attaching and detaching take hundreds of milliseconds, probe by probe).
 * Entry probes always remember their arguments; what is counted is decided
 * where an allocation returns and where a free enters. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} control SEC(".maps");

static __always_inline int counting(void)
{
	__u32 key = 0;
	__u32 *open = bpf_map_lookup_elem(&control, &key);
	return open && *open;
}

static __always_inline struct totals *family_totals(void *ctx)
{
	__u32 family = (__u32)bpf_get_attach_cookie(ctx);
	if (family >= FAMILIES)
		family = 0;
	return bpf_map_lookup_elem(&totals, &family);
}

static __always_inline int ours(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	return target_tgid == 0 || (__u32)(id >> 32) == target_tgid;
}

static __always_inline void hit(struct totals *t)
{
	if (t && counting())
		__sync_fetch_and_add(&t->probe_hits, 1);
}

static __always_inline int enter_size(void *ctx, __u64 size)
{
	if (!ours())
		return 0;
	hit(family_totals(ctx));
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending, &tid, &size, BPF_ANY);
	return 0;
}

static __always_inline void record(void *ctx, __u64 addr, __u64 size)
{
	if (!counting())
		return;
	struct totals *t = family_totals(ctx);
	struct alloc_info info = {};
	info.size = size;
	info.family = (__u32)bpf_get_attach_cookie(ctx);
	info.stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (!t)
		return;
	if (info.stack_id < 0)
		__sync_fetch_and_add(&t->stack_errors, 1);
	if (bpf_map_update_elem(&live, &addr, &info, BPF_ANY) != 0) {
		__sync_fetch_and_add(&t->dropped, 1);
		return;
	}
	__sync_fetch_and_add(&t->alloc_count, 1);
	__sync_fetch_and_add(&t->alloc_bytes, size);
	struct stack_key key = { .stack_id = info.stack_id, .family = info.family };
	struct stack_totals *st = bpf_map_lookup_elem(&alloc_stacks, &key);
	if (!st) {
		struct stack_totals zero = {};
		bpf_map_update_elem(&alloc_stacks, &key, &zero, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&alloc_stacks, &key);
	}
	if (st) {
		__sync_fetch_and_add(&st->count, 1);
		__sync_fetch_and_add(&st->bytes, size);
	}
}

static __always_inline void forget(void *ctx, __u64 addr)
{
	if (!counting())
		return;
	struct totals *t = family_totals(ctx);
	if (addr == 0 || !t)
		return;
	struct alloc_info *info = bpf_map_lookup_elem(&live, &addr);
	if (!info) {
		__sync_fetch_and_add(&t->free_unknown, 1);
		return;
	}
	__u64 size = info->size;
	if (bpf_map_delete_elem(&live, &addr) == 0) {
		__sync_fetch_and_add(&t->free_count, 1);
		__sync_fetch_and_add(&t->free_bytes, size);
	}
}

/* malloc(size), _rjem_malloc(size), _rjem_mallocx(size, flags) */
SEC("uprobe")
int BPF_KPROBE(malloc_enter, __u64 size)
{
	return enter_size(ctx, size);
}

/* calloc(n, size), _rjem_calloc(n, size) */
SEC("uprobe")
int BPF_KPROBE(calloc_enter, __u64 n, __u64 size)
{
	return enter_size(ctx, n * size);
}

/* aligned_alloc(align, size), memalign(align, size) */
SEC("uprobe")
int BPF_KPROBE(aligned_enter, __u64 align, __u64 size)
{
	return enter_size(ctx, size);
}

/* return of any of the above */
SEC("uretprobe")
int BPF_KRETPROBE(malloc_exit, __u64 ret)
{
	if (!ours())
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *size = bpf_map_lookup_elem(&pending, &tid);
	if (!size)
		return 0;
	__u64 sz = *size;
	bpf_map_delete_elem(&pending, &tid);
	if (ret != 0)
		record(ctx, ret, sz);
	return 0;
}

/* posix_memalign(void **memptr, align, size) */
SEC("uprobe")
int BPF_KPROBE(memalign_enter, __u64 memptr, __u64 align, __u64 size)
{
	if (!ours())
		return 0;
	hit(family_totals(ctx));
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct memalign_args args = { .memptr = memptr, .size = size };
	bpf_map_update_elem(&pending_memalign, &tid, &args, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(memalign_exit, int ret)
{
	if (!ours())
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct memalign_args *args = bpf_map_lookup_elem(&pending_memalign, &tid);
	if (!args)
		return 0;
	__u64 memptr = args->memptr, size = args->size, addr = 0;
	bpf_map_delete_elem(&pending_memalign, &tid);
	if (ret != 0)
		return 0;
	if (bpf_probe_read_user(&addr, sizeof(addr), (void *)memptr) == 0 && addr != 0)
		record(ctx, addr, size);
	return 0;
}

/* realloc(ptr, size), _rjem_realloc(ptr, size), _rjem_rallocx(ptr, size, flags) */
SEC("uprobe")
int BPF_KPROBE(realloc_enter, __u64 ptr, __u64 size)
{
	if (!ours())
		return 0;
	hit(family_totals(ctx));
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct realloc_args args = { .old_ptr = ptr, .size = size };
	bpf_map_update_elem(&pending_realloc, &tid, &args, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(realloc_exit, __u64 ret)
{
	if (!ours())
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct realloc_args *args = bpf_map_lookup_elem(&pending_realloc, &tid);
	if (!args)
		return 0;
	__u64 old = args->old_ptr, size = args->size;
	bpf_map_delete_elem(&pending_realloc, &tid);
	/* realloc(p, 0) frees p and may return NULL; a failed realloc keeps p */
	if (ret != 0 || size == 0)
		forget(ctx, old);
	if (ret != 0)
		record(ctx, ret, size);
	return 0;
}

/* heapprof_sampled_block(inner, inner_size, ptr, size): the inner block,
 * just recorded by the allocator's return probe with inner_size bytes,
 * holds a sampled allocation of size bytes. */
SEC("uprobe")
int BPF_KPROBE(sampled_block_enter, __u64 inner, __u64 inner_size, __u64 ptr, __u64 size)
{
	if (!ours() || !counting())
		return 0;
	struct alloc_info *info = bpf_map_lookup_elem(&live, &inner);
	if (!info || info->size != inner_size || size > inner_size)
		return 0;
	__u64 padding = inner_size - size;
	info->size = size;
	__u32 family = (__u32)info->family;
	struct totals *t = bpf_map_lookup_elem(&totals, &family);
	if (t) {
		__sync_fetch_and_add(&t->alloc_bytes, -padding);
		__sync_fetch_and_add(&t->padded, 1);
		__sync_fetch_and_add(&t->padding_bytes, padding);
	}
	struct stack_key key = { .stack_id = info->stack_id, .family = info->family };
	struct stack_totals *st = bpf_map_lookup_elem(&alloc_stacks, &key);
	if (st)
		__sync_fetch_and_add(&st->bytes, -padding);
	return 0;
}

/* free(ptr), _rjem_free(ptr), _rjem_sdallocx(ptr, size, flags), _rjem_dallocx(ptr, flags) */
SEC("uprobe")
int BPF_KPROBE(free_enter, __u64 ptr)
{
	if (!ours())
		return 0;
	hit(family_totals(ctx));
	forget(ctx, ptr);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
