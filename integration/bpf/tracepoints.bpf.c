// SPDX-License-Identifier: GPL-2.0 OR MIT
// heapprof verify --kernel: cheap kernel-side view of one process's memory
// over a window, from tracepoints (no kprobes on this kernel).
//
// Context layouts are the tracepoints' `format` files (tracefs), which are
// stable for these events: kmem:rss_stat (6.2+), syscalls:sys_enter_*,
// exceptions:page_fault_user, oom:mark_victim.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct rss_stat_args {
	__u64 common;
	__u32 mm_id;
	__u32 curr;
	__s32 member;
	__s64 size;
};

struct syscall_args {
	__u64 common;
	__s32 nr;
	__u64 args[6];
};

struct fault_args {
	__u64 common;
	__u64 address;
	__u64 ip;
	__u64 error_code;
};

struct victim_args {
	__u64 common;
	__s32 pid;
};

/* One per rss_stat member (file, anon, swap, shmem). */
struct rss {
	__u64 last;
	__u64 min;
	__u64 max;
	__u64 updates;
};

enum counter {
	MMAP_COUNT,
	MMAP_BYTES,
	MUNMAP_COUNT,
	MUNMAP_BYTES,
	BRK_COUNT,
	FAULTS,
	FAULTS_SAMPLED,
	OOM_VICTIM,
	OOM_ANY,
	MM_ID,
	COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct rss);
} rss SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 4096);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} fault_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} fault_counts SEC(".maps");

const volatile __u32 target_tgid = 0;
/* Take a user stack on one page fault in this many. */
const volatile __u32 fault_sample_every = 16;

static __always_inline int ours(void)
{
	return (__u32)(bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

static __always_inline __u64 add(__u32 c, __u64 v)
{
	__u64 *p = bpf_map_lookup_elem(&counters, &c);
	if (!p)
		return 0;
	return __sync_fetch_and_add(p, v);
}

SEC("tracepoint/kmem/rss_stat")
int rss_stat(struct rss_stat_args *ctx)
{
	__u32 key = MM_ID;
	__u64 *mm_id = bpf_map_lookup_elem(&counters, &key);
	if (!mm_id)
		return 0;
	if (ctx->curr && ours()) {
		/* learn the target's mm id from its own updates (+1: 0 = unknown) */
		*mm_id = (__u64)ctx->mm_id + 1;
	} else if (*mm_id != (__u64)ctx->mm_id + 1) {
		return 0;
	}
	__u32 member = ctx->member;
	struct rss *r = bpf_map_lookup_elem(&rss, &member);
	if (!r)
		return 0;
	__u64 size = ctx->size < 0 ? 0 : ctx->size;
	r->last = size;
	if (r->updates == 0 || size < r->min)
		r->min = size;
	if (size > r->max)
		r->max = size;
	r->updates++;
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int enter_mmap(struct syscall_args *ctx)
{
	if (!ours())
		return 0;
	add(MMAP_COUNT, 1);
	add(MMAP_BYTES, ctx->args[1]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_munmap")
int enter_munmap(struct syscall_args *ctx)
{
	if (!ours())
		return 0;
	add(MUNMAP_COUNT, 1);
	add(MUNMAP_BYTES, ctx->args[1]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_brk")
int enter_brk(struct syscall_args *ctx)
{
	if (ours())
		add(BRK_COUNT, 1);
	return 0;
}

SEC("tracepoint/exceptions/page_fault_user")
int page_fault_user(struct fault_args *ctx)
{
	if (!ours())
		return 0;
	__u64 n = add(FAULTS, 1);
	if (fault_sample_every == 0 || n % fault_sample_every != 0)
		return 0;
	__s64 id = bpf_get_stackid(ctx, &fault_stacks, BPF_F_USER_STACK);
	if (id < 0)
		return 0;
	add(FAULTS_SAMPLED, 1);
	__u32 key = id;
	__u64 one = 1;
	__u64 *count = bpf_map_lookup_elem(&fault_counts, &key);
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&fault_counts, &key, &one, BPF_NOEXIST);
	return 0;
}

SEC("tracepoint/oom/mark_victim")
int oom_victim(struct victim_args *ctx)
{
	add(OOM_ANY, 1);
	if ((__u32)ctx->pid == target_tgid)
		add(OOM_VICTIM, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
