#include <nghttp2/nghttp2.h>
#include <malloc.h>   /* malloc_usable_size: HTTP2Memory counts a session's bytes */
