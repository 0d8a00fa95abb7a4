/* Runs a command under a seccomp filter that allows everything but the named system calls,
 * which fail with EPERM (the shape of deploy/seccomp.json), through the system's libseccomp. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void *scmp_filter_ctx;
extern scmp_filter_ctx seccomp_init(uint32_t def_action);
extern int seccomp_rule_add(scmp_filter_ctx ctx, uint32_t action, int syscall, unsigned int arg_cnt, ...);
extern int seccomp_syscall_resolve_name(const char *name);
extern int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
extern int seccomp_load(scmp_filter_ctx ctx);

#define ACT_ALLOW 0x7fff0000U
#define ACT_ERRNO(x) (0x00050000U | ((x) & 0x0000ffffU))
#define FLTATR_CTL_NNP 3

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: seccomp-exec NAME,NAME,... COMMAND [ARG...]\n");
        return 2;
    }
    scmp_filter_ctx ctx = seccomp_init(ACT_ALLOW);
    if (!ctx) { fprintf(stderr, "seccomp_init failed\n"); return 2; }
    /* "none": no system call denied. */
    for (char *name = strtok(argv[1], ","); name; name = strtok(NULL, ",")) {
        int nr = seccomp_syscall_resolve_name(name);
        if (nr < 0) continue; /* not a system call of this architecture, as runc skips it */
        if (seccomp_rule_add(ctx, ACT_ERRNO(1), nr, 0) < 0) {
            fprintf(stderr, "cannot add a rule for %s\n", name);
            return 2;
        }
    }
    /* Docker does not set no_new_privs unless asked to. */
    seccomp_attr_set(ctx, FLTATR_CTL_NNP, 0);
    if (seccomp_load(ctx) < 0) { fprintf(stderr, "seccomp_load failed\n"); return 2; }
    execvp(argv[2], argv + 2);
    perror(argv[2]);
    return 127;
}
