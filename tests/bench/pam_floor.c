/*
 * pam_floor.so: the floor under pam_sshidle.so's login cost, for bench_pam.
 *
 * A PAM session module in plain C that makes the system calls a login must
 * make to keep sshidle's promises, and nothing else: no parsing beyond what
 * the calls need, no allocation, no error handling, no policy semantics. What
 * it costs over a pam_permit stack is what any implementation of the spec
 * pays on this machine; what pam_sshidle.so costs above it is ours to cut.
 *
 * open_session:
 *   - TIOCSTI taken away from the session: one seccomp(2) installing the same
 *     seccomp filter as core/src/tiocsti.rs (unless tiocsti=allow);
 *   - the account (getpwnam_r: the uid, and the primary group);
 *   - the calling process's start time (/proc/self/stat: PID reuse);
 *   - the policy file and its drop-in directory (the limits);
 *   - nsswitch.conf (whether groups come from local sources, so that the
 *     lookup may run in-process without a bound on its wait);
 *   - the user's groups (getgrouplist) and their names (getgrgid_r), as the
 *     bench's policy has group rules before its `*` rule;
 *   - one append to the journal: the state directory and the journal opened
 *     without following symlinks and fstat'ed (owner check), a shared flock,
 *     the header read, one write.
 * close_session:
 *   - one append (the logout), the ending marker looked up, one syslog line.
 *
 * Not installed and not a product: bench_pam builds it next to its own
 * stacks (cc -O2 -shared -fPIC -Wl,-z,relro,-z,now ... -lpam).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <grp.h>
#include <pwd.h>
#include <security/pam_ext.h>
#include <security/pam_modules.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static const char *arg(int argc, const char **argv, const char *key)
{
	size_t len = strlen(key);
	for (int i = 0; i < argc; i++)
		if (!strncmp(argv[i], key, len))
			return argv[i] + len;
	return NULL;
}

/* core/src/tiocsti.rs's filter for x86_64: ioctl(TIOCSTI) -> EPERM on the
 * native, x32 and i386 ABIs, the request's low 32 bits compared. */
static void deny_tiocsti(void)
{
#ifdef __x86_64__
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 4),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~0x40000000u),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 16, 4, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 514, 3, 5),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386, 0, 4),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 54, 0, 2),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x5412, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
	};
	struct sock_fprog prog = { sizeof filter / sizeof filter[0], filter };
	syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog);
#endif
}

static void read_file(const char *path, char *buf, size_t size)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	fstat(fd, &st);
	ssize_t n = read(fd, buf, size - 1);
	buf[n > 0 ? n : 0] = 0;
	close(fd);
}

static int self_start(int *pid, unsigned long long *start)
{
	char buf[1024];
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	*pid = atoi(buf);
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	/* Field 22; p is at the end of field 2. */
	for (int field = 2; *p && field < 22; p++)
		if (*p == ' ')
			field++;
	*start = strtoull(p, NULL, 10);
	return 0;
}

static void append(const char *dir, const char *line)
{
	struct stat st;
	char header[34];
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return;
	fstat(dfd, &st);
	flock(dfd, LOCK_SH | LOCK_NB);
	int fd = openat(dfd, "sessions", O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0) {
		fstat(fd, &st);
		if (pread(fd, header, sizeof header, 0) == (ssize_t)sizeof header &&
		    write(fd, line, strlen(line)) < 0)
			perror("pam_floor: write");
		close(fd);
	}
	close(dfd);
}

struct key {
	int pid;
	unsigned long long start;
};

static void free_key(pam_handle_t *pamh, void *data, int status)
{
	(void)pamh;
	(void)status;
	free(data);
}

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	const char *user = NULL, *rhost = NULL, *service = NULL;
	const char *conf = arg(argc, argv, "conf="), *state = arg(argc, argv, "state=");
	(void)flags;
	pam_get_item(pamh, PAM_USER, (const void **)&user);
	pam_get_item(pamh, PAM_RHOST, (const void **)&rhost);
	pam_get_item(pamh, PAM_SERVICE, (const void **)&service);
	if (!user || !conf || !state)
		return PAM_IGNORE;
	const char *tiocsti = arg(argc, argv, "tiocsti=");
	if (!tiocsti || strcmp(tiocsti, "allow"))
		deny_tiocsti();

	char pwbuf[4096];
	struct passwd pw, *found = NULL;
	if (getpwnam_r(user, &pw, pwbuf, sizeof pwbuf, &found) || !found)
		return PAM_IGNORE;

	struct key *key = malloc(sizeof *key);
	if (!key || self_start(&key->pid, &key->start)) {
		free(key);
		return PAM_IGNORE;
	}

	char text[16384], dropins[4096];
	read_file(conf, text, sizeof text);
	snprintf(dropins, sizeof dropins, "%s.d", conf);
	int dfd = open(dropins, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0)
		close(dfd);
	read_file("/etc/nsswitch.conf", text, sizeof text);

	gid_t gids[64];
	int ngids = 64, in_group_rule = 0;
	getgrouplist(user, pw.pw_gid, gids, &ngids);
	char grbuf[4096];
	struct group gr, *grp;
	for (int i = 0; i < ngids && i < 64; i++)
		if (!getgrgid_r(gids[i], &gr, grbuf, sizeof grbuf, &grp) && grp)
			in_group_rule |= !strcmp(gr.gr_name, "admins") || !strcmp(gr.gr_name, "contractors");

	char line[1024];
	snprintf(line, sizeof line,
		 "\nopen\tpid=%d\tstart=%llu\tuid=%u\tuser=%s\trhost=%s\tservice=%s\tlogin=%ld"
		 "\tidle=%s\twarn=60\thard=-\trule=%s:4: *\n",
		 key->pid, key->start, pw.pw_uid, user, rhost ? rhost : "", service ? service : "",
		 (long)time(NULL), in_group_rule ? "600" : "900", conf);
	append(state, line);
	pam_set_data(pamh, "pam_floor", key, free_key);
	return PAM_SUCCESS;
}

PAM_EXTERN int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	const char *state = arg(argc, argv, "state="), *user = NULL;
	const struct key *key = NULL;
	(void)flags;
	pam_get_item(pamh, PAM_USER, (const void **)&user);
	if (!state || pam_get_data(pamh, "pam_floor", (const void **)&key) != PAM_SUCCESS)
		return PAM_IGNORE;

	char line[128], ending[4096];
	snprintf(line, sizeof line, "\nclose\tpid=%d\tstart=%llu\n", key->pid, key->start);
	append(state, line);
	snprintf(ending, sizeof ending, "%s/ending.%d.%llu", state, key->pid, key->start);
	int fd = open(ending, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0)
		close(fd);
	pam_syslog(pamh, LOG_INFO, "session %d of %s closed", key->pid, user ? user : "");
	return PAM_SUCCESS;
}
