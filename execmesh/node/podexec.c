/*
 * execmesh-podexec: the last step of a local pod's start, inside its sandbox.
 *
 *     execmesh-podexec UID GID GROUPS PROGRAM [ARG...]
 *     execmesh-podexec -f FILE        (the same fields, each NUL-terminated)
 *
 * bubblewrap runs as root and builds the namespaces and mounts; this drops every privilege
 * (the bounding, ambient and inheritable capability sets, supplementary groups, the uids
 * and gids, then no_new_privs), confines the system calls as a container runtime's default
 * seccomp profile does, and executes the program, searching PATH. GROUPS is a
 * comma-separated list of gids, empty for none. It does what `setpriv --reuid --regid
 * --clear-groups --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs`
 * does, as one small static executable: setpriv and the shell that ran it were a tenth
 * of a print(1) pod's start. Built by scripts/setup.sh.
 *
 * Exit status: 125 when the arguments are wrong or a privilege cannot be dropped (nothing
 * of the program ran), 126 when the program cannot be executed, 127 when it is not found.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { MAX_FILE_BYTES = 1 << 20, MAX_FIELDS = 65536, MAX_GROUPS = 64 };

static void die(int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("execmesh-podexec: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    _exit(status);
}

static unsigned long parse_id(const char *text, const char *what) {
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || value >= UINT_MAX)
        die(125, "bad %s: \"%s\"", what, text);
    return value;
}

/* The fields of FILE, each NUL-terminated, as a NULL-terminated array. */
static char **read_fields(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(125, "%s: %s", path, strerror(errno));
    char *data = malloc(MAX_FILE_BYTES + 1);
    size_t size = 0;
    ssize_t got;
    if (!data)
        die(125, "out of memory");
    while ((got = read(fd, data + size, MAX_FILE_BYTES + 1 - size)) > 0)
        size += (size_t)got;
    if (got < 0)
        die(125, "%s: %s", path, strerror(errno));
    if (size > MAX_FILE_BYTES)
        die(125, "%s: over %d bytes", path, MAX_FILE_BYTES);
    if (size == 0 || data[size - 1] != '\0')
        die(125, "%s: the last field is not NUL-terminated", path);
    close(fd);
    char **fields = calloc(MAX_FIELDS + 1, sizeof *fields);
    size_t count = 0;
    if (!fields)
        die(125, "out of memory");
    for (size_t at = 0; at < size; at += strlen(data + at) + 1) {
        if (count == MAX_FIELDS)
            die(125, "%s: over %d fields", path, MAX_FIELDS);
        fields[count++] = data + at;
    }
    return fields;
}

static size_t parse_groups(char *text, gid_t *groups) {
    size_t count = 0;
    for (char *item = strtok(text, ","); item; item = strtok(NULL, ",")) {
        if (count == MAX_GROUPS)
            die(125, "over %d groups", MAX_GROUPS);
        groups[count++] = (gid_t)parse_id(item, "group");
    }
    return count;
}

static void drop_privileges(uid_t uid, gid_t gid, const gid_t *groups, size_t group_count) {
    /* Bounding set first: dropping it needs CAP_SETPCAP, gone once the uid changes. */
    for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
            die(125, "cannot drop capability %d from the bounding set: %s", cap, strerror(errno));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        die(125, "cannot clear the ambient capabilities: %s", strerror(errno));
    if (setgroups(group_count, groups) != 0)
        die(125, "setgroups: %s", strerror(errno));
    if (setresgid(gid, gid, gid) != 0)
        die(125, "setresgid %u: %s", gid, strerror(errno));
    /* A root process that becomes non-root loses its permitted and effective sets. */
    if (setresuid(uid, uid, uid) != 0)
        die(125, "setresuid %u: %s", uid, strerror(errno));
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {{0}};
    if (syscall(SYS_capset, &header, none) != 0)
        die(125, "cannot clear the capability sets: %s", strerror(errno));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die(125, "cannot set no_new_privs: %s", strerror(errno));
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;
    if (getresuid(&ruid, &euid, &suid) != 0 || getresgid(&rgid, &egid, &sgid) != 0 ||
        ruid != uid || euid != uid || suid != uid || rgid != gid || egid != gid || sgid != gid)
        die(125, "the uids and gids did not change");
}

/*
 * What containerd's and Docker's default seccomp profiles refuse a container that holds no
 * capability: above all new namespaces (an unprivileged user namespace is root inside it,
 * with mount and much of the kernel within reach), then kernel keyrings, eBPF, perf events,
 * userfaultfd, io_uring, and the calls a missing capability already refuses (mounts,
 * modules, clocks, reboot...), refused here as well. ptrace and process_vm_* stay allowed,
 * as there: the pid namespace keeps them within the pod.
 */
static const char *const REFUSED[] = {
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "fanotify_init", "finit_module", "fsconfig", "fsmount", "fsopen",
    "fspick", "get_kernel_syms", "init_module", "io_uring_enter", "io_uring_register",
    "io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
    "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
    "query_module", "quotactl", "quotactl_fd", "reboot", "request_key", "setns",
    "settimeofday", "swapoff", "swapon", "syslog", "_sysctl", "sysfs", "umount", "umount2",
    "unshare", "uselib", "userfaultfd", "ustat", "vhangup", "vm86", "vm86old",
};

static const unsigned long NEW_NAMESPACES[] = {
    CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS,
    CLONE_NEWPID, CLONE_NEWTIME, CLONE_NEWUSER, CLONE_NEWUTS,
};

static void confine_syscalls(void) {
    scmp_filter_ctx filter = seccomp_init(SCMP_ACT_ALLOW);
    if (!filter)
        die(125, "seccomp: cannot create a filter");
    /* A binary tree of the call numbers: every system call of the program passes the filter. */
    int rc = seccomp_attr_set(filter, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    for (size_t i = 0; rc == 0 && i < sizeof REFUSED / sizeof *REFUSED; i++) {
        int call = seccomp_syscall_resolve_name(REFUSED[i]);
        if (call != __NR_SCMP_ERROR) /* not a call of this architecture */
            rc = seccomp_rule_add(filter, SCMP_ACT_ERRNO(EPERM), call, 0);
    }
    for (size_t i = 0; rc == 0 && i < sizeof NEW_NAMESPACES / sizeof *NEW_NAMESPACES; i++)
        rc = seccomp_rule_add(filter, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, NEW_NAMESPACES[i], NEW_NAMESPACES[i]));
    /* clone3 takes its flags in memory, out of a filter's sight: "not implemented" makes the
     * C library and Go fall back to clone, whose flags are checked above. */
    if (rc == 0)
        rc = seccomp_rule_add(filter, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    if (rc == 0)
        rc = seccomp_load(filter);
    if (rc != 0)
        die(125, "seccomp: cannot install the filter: %s", strerror(-rc));
    seccomp_release(filter);
}

int main(int argc, char **argv) {
    char **fields = argv + 1;
    if (argc == 3 && strcmp(argv[1], "-f") == 0)
        fields = read_fields(argv[2]);
    size_t count = 0;
    while (fields[count])
        count++;
    if (count < 4)
        die(125, "usage: execmesh-podexec UID GID GROUPS PROGRAM [ARG...] | -f FILE");
    uid_t uid = (uid_t)parse_id(fields[0], "uid");
    gid_t gid = (gid_t)parse_id(fields[1], "gid");
    if (uid == 0 || gid == 0)
        die(125, "refusing to run a pod program as root");
    gid_t groups[MAX_GROUPS];
    size_t group_count = parse_groups(fields[2], groups);
    for (size_t i = 0; i < group_count; i++)
        if (groups[i] == 0)
            die(125, "refusing the root group");
    drop_privileges(uid, gid, groups, group_count);
    confine_syscalls();
    execvp(fields[3], fields + 3);
    int failure = errno;
    fprintf(stderr, "execmesh-podexec: cannot execute %s: %s\n", fields[3], strerror(failure));
    return failure == ENOENT ? 127 : 126;
}
