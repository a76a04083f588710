/*
 * seccomp-exec SPEC -- PROGRAM ARGS...: loads the seccomp filters described in SPEC, then execs
 * PROGRAM. The unit sandbox test derives SPEC from systemd/edgekeeper.service, so the daemon runs
 * under the system call filter systemd would give it. One directive per line:
 *   mode allow|deny      SystemCallFilter's kind
 *   errno N              SystemCallErrorNumber (the default action of an allow list)
 *   call NAME            a system call in that list
 *   deny NAME            also refused with EPERM (ProtectClock=, ProtectKernelModules=, ...)
 *   family N             RestrictAddressFamilies=: socket() is allowed for these families only
 *   namespaces           RestrictNamespaces=yes
 * Like systemd, each setting is its own filter; the kernel applies the strictest answer. Only the
 * native architecture is added, so other ABIs are killed (SystemCallArchitectures=native).
 * Names libseccomp does not know on this architecture are skipped and counted on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX 4096

static void die(const char *what, int r) {
  fprintf(stderr, "seccomp-exec: %s: %s\n", what, strerror(r < 0 ? -r : r));
  exit(126);
}

static void add(scmp_filter_ctx c, uint32_t action, const char *name, unsigned *unknown) {
  int nr = seccomp_syscall_resolve_name(name);
  if (nr == __NR_SCMP_ERROR) {
    (*unknown)++;
    return;
  }
  int r = seccomp_rule_add(c, action, nr, 0);
  if (r < 0) die(name, r);
}

static const unsigned long NS_FLAGS[] = {CLONE_NEWNS,  CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                                         CLONE_NEWUSER, CLONE_NEWPID,    CLONE_NEWNET, 0x00000080 /* CLONE_NEWTIME */};

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: seccomp-exec SPEC -- PROGRAM ARGS...\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "r");
  if (!f) die(argv[1], errno);
  static char calls[MAX][64], denies[MAX][64];
  int ncalls = 0, ndenies = 0, allow = -1, err = EPERM, namespaces = 0;
  int families[64], nfamilies = -1;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    char key[32], val[64];
    if (sscanf(line, "%31s %63s", key, val) < 1) continue;
    if (!strcmp(key, "mode")) allow = !strcmp(val, "allow");
    else if (!strcmp(key, "errno")) err = atoi(val);
    else if (!strcmp(key, "call") && ncalls < MAX) strcpy(calls[ncalls++], val);
    else if (!strcmp(key, "deny") && ndenies < MAX) strcpy(denies[ndenies++], val);
    else if (!strcmp(key, "family") && nfamilies < 63) {
      if (nfamilies < 0) nfamilies = 0;
      families[nfamilies++] = atoi(val);
    } else if (!strcmp(key, "namespaces")) namespaces = 1;
    else {
      fprintf(stderr, "seccomp-exec: unknown directive %s\n", key);
      return 2;
    }
  }
  fclose(f);
  unsigned unknown = 0;
  int r;

  if (ndenies) {
    scmp_filter_ctx c = seccomp_init(SCMP_ACT_ALLOW);
    for (int i = 0; i < ndenies; i++) add(c, SCMP_ACT_ERRNO(EPERM), denies[i], &unknown);
    if ((r = seccomp_load(c)) < 0) die("load deny filter", r);
    seccomp_release(c);
  }
  if (nfamilies >= 0) {
    scmp_filter_ctx c = seccomp_init(SCMP_ACT_ALLOW);
    int nr = seccomp_syscall_resolve_name("socket");
    for (int fam = 0; fam < 64; fam++) {
      int ok = 0;
      for (int i = 0; i < nfamilies; i++) ok |= families[i] == fam;
      if (!ok && (r = seccomp_rule_add(c, SCMP_ACT_ERRNO(EAFNOSUPPORT), nr, 1, SCMP_A0(SCMP_CMP_EQ, fam))) < 0)
        die("family rule", r);
    }
    if ((r = seccomp_rule_add(c, SCMP_ACT_ERRNO(EAFNOSUPPORT), nr, 1, SCMP_A0(SCMP_CMP_GE, 64))) < 0)
      die("family rule", r);
    if ((r = seccomp_load(c)) < 0) die("load family filter", r);
    seccomp_release(c);
  }
  if (namespaces) {
    scmp_filter_ctx c = seccomp_init(SCMP_ACT_ALLOW);
    int un = seccomp_syscall_resolve_name("unshare"), cl = seccomp_syscall_resolve_name("clone"),
        sn = seccomp_syscall_resolve_name("setns"), c3 = seccomp_syscall_resolve_name("clone3");
    for (unsigned i = 0; i < sizeof NS_FLAGS / sizeof NS_FLAGS[0]; i++) {
      unsigned long b = NS_FLAGS[i];
      seccomp_rule_add(c, SCMP_ACT_ERRNO(EPERM), un, 1, SCMP_A0(SCMP_CMP_MASKED_EQ, b, b));
      seccomp_rule_add(c, SCMP_ACT_ERRNO(EPERM), cl, 1, SCMP_A0(SCMP_CMP_MASKED_EQ, b, b));
      seccomp_rule_add(c, SCMP_ACT_ERRNO(EPERM), sn, 1, SCMP_A1(SCMP_CMP_MASKED_EQ, b, b));
    }
    seccomp_rule_add(c, SCMP_ACT_ERRNO(EPERM), sn, 1, SCMP_A1(SCMP_CMP_EQ, 0));
    // clone3's flags sit in a struct seccomp cannot read: refused as absent, so libc uses clone().
    if (c3 != __NR_SCMP_ERROR) seccomp_rule_add(c, SCMP_ACT_ERRNO(ENOSYS), c3, 0);
    if ((r = seccomp_load(c)) < 0) die("load namespace filter", r);
    seccomp_release(c);
  }
  // Last: an allow list that leaves out seccomp() would refuse the filters after it.
  if (allow >= 0) {
    scmp_filter_ctx c = seccomp_init(allow ? SCMP_ACT_ERRNO(err) : SCMP_ACT_ALLOW);
    for (int i = 0; i < ncalls; i++) add(c, allow ? SCMP_ACT_ALLOW : SCMP_ACT_ERRNO(err), calls[i], &unknown);
    if ((r = seccomp_load(c)) < 0) die("load system call filter", r);
    seccomp_release(c);
  }
  if (unknown) fprintf(stderr, "seccomp-exec: %u names not on this architecture skipped\n", unknown);
  execvp(argv[3], argv + 3);
  die(argv[3], errno);
}
