// The one shim that needs _GNU_SOURCE (accept4); every other shim is a static inline in the header.
#define _GNU_SOURCE 1
#include <sys/socket.h>
#include <stddef.h>

int mesh_accept4(int fd) {
    return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
