// CMeshShims: the few Linux and OpenSSL symbols that Swift cannot import directly
// (macros, and headers Glibc's module leaves out). Every wrapper is a static inline
// with a `mesh_` prefix; there is no logic here beyond the call it wraps.
#ifndef CMESHSHIMS_H
#define CMESHSHIMS_H

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <sys/uio.h>
#include <sys/prctl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <linux/netfilter_ipv4.h>
#include <signal.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#include <errno.h>
#include <time.h>
#include <sys/random.h>
#include <sys/resource.h>

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/bn.h>

// ---- Linux ----
/// accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC) (needs _GNU_SOURCE, so it lives in shims.c).
int mesh_accept4(int fd);
/// pipe2(fds, flags) (needs _GNU_SOURCE); with `bigNonblockingWrite`, the write end holds up to
/// 1 MiB (F_SETPIPE_SZ) and both ends are non-blocking.
int mesh_pipe(int fds[2], int nonblocking);
static inline int mesh_errno(void) { return errno; }
static inline void mesh_set_errno(int e) { errno = e; }
static inline uint64_t mesh_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static inline uint64_t mesh_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
/// Blocks SIGTERM, SIGINT, SIGHUP and SIGPIPE in the calling thread (threads created after inherit it)
/// and returns a signalfd that reports the first three.
static inline int mesh_block_signals_signalfd(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    sigdelset(&set, SIGPIPE);
    return signalfd(-1, &set, SFD_CLOEXEC);
}
static inline int mesh_signalfd_read(int fd) {
    struct signalfd_siginfo si;
    ssize_t n = read(fd, &si, sizeof si);
    if (n != sizeof si) return -1;
    return (int)si.ssi_signo;
}
static inline int mesh_sigterm(void) { return SIGTERM; }
static inline int mesh_sigint(void) { return SIGINT; }
static inline int mesh_sighup(void) { return SIGHUP; }

/// Raises the soft limit on open files to the hard limit (a proxy holds two descriptors per
/// proxied connection); returns the new soft limit.
static inline long mesh_raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    if (rl.rlim_cur < rl.rlim_max) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    getrlimit(RLIMIT_NOFILE, &rl);
    return (long)rl.rlim_cur;
}

/// Original destination of a redirected connection (iptables REDIRECT), for transparent capture:
/// SO_ORIGINAL_DST at SOL_IP for IPv4, IP6T_SO_ORIGINAL_DST (the same number, 80) at SOL_IPV6 for
/// IPv6, both answered from the connection's conntrack entry. `family` is the accepted socket's.
/// Returns 0 and fills `out`/`len`, or -1 with errno (ENOENT: no conntrack entry).
static inline int mesh_original_dst(int fd, int family, struct sockaddr_storage *out, socklen_t *len) {
    *len = family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    return getsockopt(fd, family == AF_INET6 ? SOL_IPV6 : SOL_IP, 80 /* SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST */, out, len);
}

/// Drops every capability from the bounding set but `keep` (after the exec that follows, even a
/// root process then has only that one; prctl is variadic, so Swift calls it through here).
/// Async-signal-safe: for a forked child before execve.
static inline int mesh_drop_bounding_caps_except(int keep) {
    for (int cap = 0; cap <= 63; cap++) {
        if (cap == keep) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    }
    return 0;
}

/// Asks for `sig` when the parent goes away (PR_SET_PDEATHSIG; prctl is variadic), then checks
/// that the parent is still `parent` (it may have died before the call): -1 when it is not.
/// Async-signal-safe: for a forked child before execve.
static inline int mesh_die_with_parent(int sig, pid_t parent) {
    if (prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0) return -1;
    return getppid() == parent ? 0 : -1;
}

// ---- OpenSSL macros ----
static inline int mesh_SSL_CTX_set_min_proto_version(SSL_CTX *c, int v) { return (int)SSL_CTX_set_min_proto_version(c, v); }
static inline int mesh_SSL_CTX_set_max_proto_version(SSL_CTX *c, int v) { return (int)SSL_CTX_set_max_proto_version(c, v); }
static inline int mesh_SSL_CTX_set1_groups_list(SSL_CTX *c, const char *l) { return (int)SSL_CTX_set1_groups_list(c, l); }
static inline long mesh_SSL_CTX_set_mode(SSL_CTX *c, long m) { return SSL_CTX_set_mode(c, m); }
static inline long mesh_SSL_CTX_set_session_cache_mode(SSL_CTX *c, long m) { return SSL_CTX_set_session_cache_mode(c, m); }
static inline int mesh_SSL_set_tlsext_host_name(SSL *s, const char *n) { return (int)SSL_set_tlsext_host_name(s, n); }
static inline long mesh_SSL_CTX_add1_chain_cert(SSL_CTX *c, X509 *x) { return SSL_CTX_add1_chain_cert(c, x); }
static inline void mesh_OPENSSL_free(void *p) { OPENSSL_free(p); }
static inline int mesh_SSL_set_app_data(SSL *s, void *p) { return SSL_set_app_data(s, p); }
static inline void *mesh_SSL_get_app_data(const SSL *s) { return SSL_get_app_data(s); }
static inline void mesh_BIO_set_retry_read(BIO *b) { BIO_set_retry_read(b); }
static inline void mesh_BIO_set_retry_write(BIO *b) { BIO_set_retry_write(b); }
static inline void mesh_BIO_clear_retry_flags(BIO *b) { BIO_clear_retry_flags(b); }
static inline int mesh_sk_GENERAL_NAME_num(const GENERAL_NAMES *n) { return sk_GENERAL_NAME_num(n); }
static inline GENERAL_NAME *mesh_sk_GENERAL_NAME_value(const GENERAL_NAMES *n, int i) { return sk_GENERAL_NAME_value(n, i); }
static inline void mesh_GENERAL_NAMES_free(GENERAL_NAMES *n) { GENERAL_NAMES_free(n); }
// CSR extensions (certificate authority).
static inline STACK_OF(X509_EXTENSION) *mesh_sk_X509_EXTENSION_new(void) { return sk_X509_EXTENSION_new_null(); }
static inline int mesh_sk_X509_EXTENSION_push(STACK_OF(X509_EXTENSION) *s, X509_EXTENSION *e) { return sk_X509_EXTENSION_push(s, e); }
static inline int mesh_sk_X509_EXTENSION_num(const STACK_OF(X509_EXTENSION) *s) { return sk_X509_EXTENSION_num(s); }
static inline X509_EXTENSION *mesh_sk_X509_EXTENSION_value(const STACK_OF(X509_EXTENSION) *s, int i) { return sk_X509_EXTENSION_value(s, i); }
static inline void mesh_sk_X509_EXTENSION_free_all(STACK_OF(X509_EXTENSION) *s) { sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free); }
static inline long mesh_BIO_get_mem_data(BIO *b, char **p) { return BIO_get_mem_data(b, p); }
static inline int mesh_MBSTRING_ASC(void) { return MBSTRING_ASC; }
static inline uint64_t mesh_SSL_OP_NO_TICKET(void) { return SSL_OP_NO_TICKET; }
static inline STACK_OF(X509) *mesh_sk_X509_new(void) { return sk_X509_new_null(); }
static inline int mesh_sk_X509_push(STACK_OF(X509) *s, X509 *x) { return sk_X509_push(s, x); }
static inline void mesh_sk_X509_free(STACK_OF(X509) *s) { sk_X509_free(s); }
static inline int mesh_sk_X509_num(const STACK_OF(X509) *s) { return sk_X509_num(s); }
static inline X509 *mesh_sk_X509_value(const STACK_OF(X509) *s, int i) { return sk_X509_value(s, i); }

/// SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE (do not import).
static inline uint64_t mesh_ssl_secure_options(void) {
    return (uint64_t)(SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
}
static inline unsigned long mesh_xn_flag_rfc2253(void) { return XN_FLAG_RFC2253; }

/// Returns free heap pages to the system (glibc's malloc_trim; a no-op elsewhere).
static inline int mesh_malloc_trim(void) {
#ifdef __GLIBC__
    return malloc_trim(0);
#else
    return 0;
#endif
}

#endif
