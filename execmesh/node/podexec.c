/*
 * execmesh-podexec: the last step of a local pod's start, inside its sandbox.
 *
 *     execmesh-podexec UID GID GROUPS PROGRAM [ARG...]
 *     execmesh-podexec -f FILE        (the same fields, each NUL-terminated)
 *
 * bubblewrap runs as root and builds the namespaces and mounts; this drops every privilege
 * (the bounding, ambient and inheritable capability sets, supplementary groups, the uids
 * and gids, then no_new_privs) and executes the program, searching PATH. GROUPS is a
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
    execvp(fields[3], fields + 3);
    int failure = errno;
    fprintf(stderr, "execmesh-podexec: cannot execute %s: %s\n", fields[3], strerror(failure));
    return failure == ENOENT ? 127 : 126;
}
