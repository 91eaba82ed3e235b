// The one shim that needs _GNU_SOURCE (accept4); every other shim is a static inline in the header.
#define _GNU_SOURCE 1
#include <sys/socket.h>
#include <stddef.h>
#include <fcntl.h>
#include <unistd.h>

int mesh_accept4(int fd) {
    return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int mesh_pipe(int fds[2], int nonblocking) {
    int rc = pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0));
    if (rc == 0 && nonblocking) fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
    return rc;
}
