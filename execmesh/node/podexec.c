/*
 * execmesh-podexec: the last step of a local pod's start, inside its sandbox.
 *
 *     execmesh-podexec FD
 *
 * bubblewrap runs as root and builds the namespaces and the mounts every pod has; it can do
 * that ahead of time, before the node knows the pod (a parked launcher). This waits for the
 * pod's launch spec on FD, read to its end: NUL-terminated fields, options then "--" then
 * UID GID GROUPS PROGRAM [ARG...]. The options, applied in order, are the pod's part of the
 * sandbox, as bubblewrap's own options would be:
 *
 *     --hostname NAME          --tmpfs PATH BYTES (mode 1777)
 *     --ro-bind SOURCE PATH    --bind SOURCE PATH  (missing parents made 0755)
 *     --umount PATH (and its directory removed)    --remount-ro PATH
 *     --chdir DIR              --setenv NAME VALUE (the program's whole environment)
 *     --fsize BYTES            (RLIMIT_FSIZE of the program)
 *
 * Then it drops every privilege (the bounding, ambient and inheritable capability sets,
 * supplementary groups, the uids and gids, then no_new_privs), confines the system calls as a
 * container runtime's default seccomp profile does, and executes the program, searching the
 * PATH of its environment. GROUPS is a comma-separated list of gids, empty for none. As one
 * small static executable it replaced setpriv and the shell that ran it, a tenth of a
 * print(1) pod's start. Built by scripts/setup.sh.
 *
 * Exit status: 125 when the spec is wrong or a mount or a privilege drop fails (nothing of
 * the program ran), 126 when the program cannot be executed, 127 when it is not found.
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
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { MAX_SPEC_BYTES = 1 << 20, MAX_FIELDS = 65536, MAX_GROUPS = 64 };

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

/* A byte count: a tmpfs size or a file-size limit, which may pass 4 GiB. */
static long long parse_size(const char *text, const char *what) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-' || value > LLONG_MAX)
        die(125, "bad %s: \"%s\"", what, text);
    return (long long)value;
}

/* The fields read from FD to its end, each NUL-terminated, as a NULL-terminated array. */
static char **read_fields(int fd) {
    char *data = malloc(MAX_SPEC_BYTES + 1);
    size_t size = 0;
    ssize_t got;
    if (!data)
        die(125, "out of memory");
    while ((got = read(fd, data + size, MAX_SPEC_BYTES + 1 - size)) != 0) {
        if (got < 0 && errno != EINTR)
            die(125, "reading the launch spec: %s", strerror(errno));
        if (got > 0 && (size += (size_t)got) > MAX_SPEC_BYTES)
            die(125, "the launch spec is over %d bytes", MAX_SPEC_BYTES);
    }
    close(fd);
    if (size == 0)
        die(125, "no launch spec: the pod was not started");
    if (data[size - 1] != '\0')
        die(125, "the launch spec's last field is not NUL-terminated");
    char **fields = calloc(MAX_FIELDS + 1, sizeof *fields);
    size_t count = 0;
    if (!fields)
        die(125, "out of memory");
    for (size_t at = 0; at < size; at += strlen(data + at) + 1) {
        if (count == MAX_FIELDS)
            die(125, "the launch spec is over %d fields", MAX_FIELDS);
        fields[count++] = data + at;
    }
    return fields;
}

/* The directories above PATH, made 0755 where missing (as bubblewrap's --dir would). */
static void make_parents(const char *path) {
    char *copy = strdup(path);
    if (!copy)
        die(125, "out of memory");
    for (char *slash = strchr(copy + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        if (mkdir(copy, 0755) != 0 && errno != EEXIST)
            die(125, "cannot make %s: %s", copy, strerror(errno));
        *slash = '/';
    }
    free(copy);
}

/* A mount point at PATH of SOURCE's kind, unless something is there: a directory, or an
 * empty file. What exists is mounted over as it is, never opened. */
static void make_mount_point(const char *path, int directory) {
    struct stat info;
    if (stat(path, &info) == 0)
        return;
    make_parents(path);
    int made = directory ? mkdir(path, 0755) : mknod(path, S_IFREG | 0644, 0);
    if (made != 0 && errno != EEXIST)
        die(125, "cannot make %s: %s", path, strerror(errno));
}

static void mount_tmpfs(const char *path, const char *bytes) {
    char options[64];
    long long size = parse_size(bytes, "tmpfs size");
    snprintf(options, sizeof options, "mode=1777,size=%lld", size);
    make_mount_point(path, 1);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, options) != 0)
        die(125, "cannot mount a tmpfs on %s: %s", path, strerror(errno));
}

static void bind(const char *source, const char *path, int read_only) {
    struct stat info;
    if (stat(source, &info) != 0)
        die(125, "%s: %s", source, strerror(errno));
    make_mount_point(path, S_ISDIR(info.st_mode));
    if (mount(source, path, NULL, MS_BIND | MS_REC, NULL) != 0)
        die(125, "cannot bind %s on %s: %s", source, path, strerror(errno));
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (read_only ? MS_RDONLY : 0);
    if (mount("none", path, NULL, flags, NULL) != 0)
        die(125, "cannot remount %s: %s", path, strerror(errno));
}

static void remount_read_only(const char *path) {
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV;
    if (mount("none", path, NULL, flags, NULL) != 0)
        die(125, "cannot remount %s read-only: %s", path, strerror(errno));
}

static void unmount(const char *path) {
    if (umount2(path, MNT_DETACH) != 0 || rmdir(path) != 0)
        die(125, "cannot remove the mount %s: %s", path, strerror(errno));
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

struct launch {
    const char *hostname, *workdir;
    char **env;
    size_t env_count;
    long long file_bytes; /* -1: no limit of its own */
    char **program;       /* UID GID GROUPS PROGRAM [ARG...] */
};

/* What needs an argument is checked for one: fields[at + 1 .. at + count] exist. Every
 * option takes a fixed count, so an operand may be anything, "--" included (an env value). */
static char **operands(char **fields, size_t at, size_t count) {
    for (size_t i = 1; i <= count; i++)
        if (!fields[at + i])
            die(125, "%s needs %zu argument(s)", fields[at], count);
    return fields + at + 1;
}

static int is_path(const char *text) {
    return text[0] == '/';
}

/* Apply the mount options in order; keep the rest for after them. */
static struct launch apply_options(char **fields) {
    struct launch launch = {NULL, NULL, NULL, 0, -1, NULL};
    size_t total = 0, at = 0;
    while (fields[total])
        total++;
    launch.env = calloc(total + 1, sizeof *launch.env);
    if (!launch.env)
        die(125, "out of memory");
    while (fields[at] && strcmp(fields[at], "--") != 0) {
        const char *option = fields[at];
        char **arg;
        if (strcmp(option, "--tmpfs") == 0) {
            arg = operands(fields, at, 2);
            if (!is_path(arg[0]))
                die(125, "--tmpfs: not an absolute path: \"%s\"", arg[0]);
            mount_tmpfs(arg[0], arg[1]);
            at += 3;
        } else if (strcmp(option, "--ro-bind") == 0 || strcmp(option, "--bind") == 0) {
            arg = operands(fields, at, 2);
            if (!is_path(arg[0]) || !is_path(arg[1]))
                die(125, "%s: not an absolute path", option);
            bind(arg[0], arg[1], option[2] == 'r');
            at += 3;
        } else if (strcmp(option, "--umount") == 0 || strcmp(option, "--remount-ro") == 0) {
            arg = operands(fields, at, 1);
            if (!is_path(arg[0]))
                die(125, "%s: not an absolute path: \"%s\"", option, arg[0]);
            (option[2] == 'u' ? unmount : remount_read_only)(arg[0]);
            at += 2;
        } else if (strcmp(option, "--hostname") == 0) {
            launch.hostname = operands(fields, at, 1)[0];
            at += 2;
        } else if (strcmp(option, "--chdir") == 0) {
            launch.workdir = operands(fields, at, 1)[0];
            at += 2;
        } else if (strcmp(option, "--fsize") == 0) {
            launch.file_bytes = parse_size(operands(fields, at, 1)[0], "file size");
            at += 2;
        } else if (strcmp(option, "--setenv") == 0) {
            arg = operands(fields, at, 2);
            if (!arg[0][0] || strchr(arg[0], '='))
                die(125, "--setenv: bad name \"%s\"", arg[0]);
            size_t length = strlen(arg[0]) + strlen(arg[1]) + 2;
            char *entry = malloc(length);
            if (!entry)
                die(125, "out of memory");
            snprintf(entry, length, "%s=%s", arg[0], arg[1]);
            launch.env[launch.env_count++] = entry;
            at += 3;
        } else {
            die(125, "unknown option \"%s\"", option);
        }
    }
    if (!fields[at])
        die(125, "the launch spec has no \"--\" before the program");
    launch.program = fields + at + 1;
    return launch;
}

int main(int argc, char **argv) {
    if (argc != 2)
        die(125, "usage: execmesh-podexec FD (the launch spec, read to its end)");
    char **fields = read_fields((int)parse_id(argv[1], "file descriptor"));
    struct launch launch = apply_options(fields);
    char **program = launch.program;
    size_t count = 0;
    while (program[count])
        count++;
    if (count < 4)
        die(125, "the launch spec needs UID GID GROUPS PROGRAM after \"--\"");
    uid_t uid = (uid_t)parse_id(program[0], "uid");
    gid_t gid = (gid_t)parse_id(program[1], "gid");
    if (uid == 0 || gid == 0)
        die(125, "refusing to run a pod program as root");
    gid_t groups[MAX_GROUPS];
    size_t group_count = parse_groups(program[2], groups);
    for (size_t i = 0; i < group_count; i++)
        if (groups[i] == 0)
            die(125, "refusing the root group");
    if (launch.hostname && sethostname(launch.hostname, strlen(launch.hostname)) != 0)
        die(125, "sethostname: %s", strerror(errno));
    if (launch.workdir && chdir(launch.workdir) != 0)
        die(125, "cannot change to %s: %s", launch.workdir, strerror(errno));
    if (launch.file_bytes >= 0) {
        struct rlimit limit = {(rlim_t)launch.file_bytes, (rlim_t)launch.file_bytes};
        if (setrlimit(RLIMIT_FSIZE, &limit) != 0)
            die(125, "cannot limit the file size: %s", strerror(errno));
    }
    drop_privileges(uid, gid, groups, group_count);
    confine_syscalls();
    environ = launch.env;
    execvp(program[3], program + 3);
    int failure = errno;
    fprintf(stderr, "execmesh-podexec: cannot execute %s: %s\n", program[3], strerror(failure));
    return failure == ENOENT ? 127 : 126;
}
