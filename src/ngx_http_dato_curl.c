
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <curl/curl.h>

#include "ngx_http_dato_curl.h"


typedef struct {
    ngx_queue_t                  queue;
    CURL                        *easy;
    ngx_http_dato_curl_done_pt   done;
    void                        *data;
    ngx_http_dato_curl_t        *bridge;

    /* the resolution the transfer waits for before it is in the multi */
    ngx_http_dato_curl_host_t   *host;
    ngx_resolver_ctx_t          *ctx;

    /* where curl connects; it reads these lists while the transfer runs */
    struct curl_slist           *resolve;
    struct curl_slist           *connect_to;

    /* a resolution that failed at once is told from the event loop */
    ngx_event_t                  failed;
    CURLcode                     rc;

    unsigned                     added:1;
    unsigned                     starting:1;
} ngx_http_dato_curl_xfer_t;


/* a socket that the bridge opened for curl and has not seen closed */
typedef struct {
    ngx_socket_t                 fd;

    /* its inode: tells it from whatever gets its number after it */
    ngx_file_uniq_t              uniq;

    /* its nginx connection, made when curl first polls it */
    ngx_connection_t            *c;
} ngx_http_dato_curl_sock_t;


struct ngx_http_dato_curl_s {
    CURLM                       *multi;
    ngx_log_t                   *log;
    ngx_pool_t                  *pool;

    /*
     * ngx_http_dato_curl_sock_t: the sockets the bridge opened for curl
     * (CURLOPT_OPENSOCKETFUNCTION) and that curl has not closed through it
     * (CURLOPT_CLOSESOCKETFUNCTION); few, so a plain array.  It lives in
     * the worker, as the bridge: fd numbers are the worker process's.  An
     * fd number alone cannot say whose a socket is: libcurl 7.88 closes a
     * socket that never connected (an abort, a failed connect) with a
     * plain close(), tells of it only later, or never, and the number may
     * be handed out again meanwhile.  So the bridge closes, frees or asks
     * the event module about a connection only while its record says the
     * number is still the socket it opened.
     */
    ngx_array_t                  socks;

    ngx_queue_t                  xfers;

    ngx_event_t                  timer;

    /* the timer's data: nginx's debug log reads an fd from it */
    ngx_connection_t             dummy;

    unsigned                     aborted:1;
};


static int ngx_http_dato_curl_socket(CURL *easy, curl_socket_t s, int what,
    void *userp, void *socketp);
static int ngx_http_dato_curl_timer(CURLM *multi, long timeout_ms,
    void *userp);
static curl_socket_t ngx_http_dato_curl_open(void *clientp,
    curlsocktype purpose, struct curl_sockaddr *addr);
static ngx_int_t ngx_http_dato_curl_renew(ngx_http_dato_curl_sock_t *sock,
    ngx_log_t *log);
static int ngx_http_dato_curl_close(void *clientp, curl_socket_t s);
static int ngx_http_dato_curl_shut(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_sock_t *sock);
static void ngx_http_dato_curl_failed(ngx_http_dato_curl_t *bridge,
    CURLMcode rc, const char *call);
static ngx_int_t ngx_http_dato_curl_add(ngx_http_dato_curl_xfer_t *xfer);
static ngx_int_t ngx_http_dato_curl_resolve(ngx_http_dato_curl_xfer_t *xfer,
    ngx_http_dato_curl_host_t *host);
static void ngx_http_dato_curl_resolved(ngx_resolver_ctx_t *ctx);
static CURLcode ngx_http_dato_curl_point(ngx_http_dato_curl_xfer_t *xfer,
    ngx_resolver_ctx_t *ctx);
static void ngx_http_dato_curl_fail(ngx_event_t *ev);
static void ngx_http_dato_curl_free(ngx_http_dato_curl_xfer_t *xfer);
static void ngx_http_dato_curl_event_handler(ngx_event_t *ev);
static void ngx_http_dato_curl_timer_handler(ngx_event_t *ev);
static void ngx_http_dato_curl_done(ngx_http_dato_curl_t *bridge);
static void ngx_http_dato_curl_finish(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_xfer_t *xfer, CURLcode rc);
static ngx_int_t ngx_http_dato_curl_connection(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_sock_t *sock);
static ngx_http_dato_curl_sock_t *ngx_http_dato_curl_record(
    ngx_http_dato_curl_t *bridge, ngx_socket_t s);
static ngx_int_t ngx_http_dato_curl_identify(ngx_http_dato_curl_sock_t *sock,
    ngx_log_t *log);
static ngx_http_dato_curl_sock_t *ngx_http_dato_curl_find(
    ngx_http_dato_curl_t *bridge, curl_socket_t s);
static ngx_uint_t ngx_http_dato_curl_owned(ngx_http_dato_curl_sock_t *sock);
static void ngx_http_dato_curl_unwatch(ngx_connection_t *c);
static void ngx_http_dato_curl_release(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_sock_t *sock);
static void ngx_http_dato_curl_drop(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_sock_t *sock);


/* one per worker process: libcurl is set up with it and cleaned up after */

ngx_http_dato_curl_t *
ngx_http_dato_curl_create(ngx_log_t *log)
{
    CURLMcode              rc;
    ngx_pool_t            *pool;
    ngx_http_dato_curl_t  *bridge;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_EMERG, log, 0, "dato: curl_global_init() failed");
        return NULL;
    }

    pool = ngx_create_pool(1024, log);
    if (pool == NULL) {
        curl_global_cleanup();
        return NULL;
    }

    bridge = ngx_pcalloc(pool, sizeof(ngx_http_dato_curl_t));
    if (bridge == NULL) {
        goto failed;
    }

    bridge->pool = pool;
    bridge->log = log;

    if (ngx_array_init(&bridge->socks, pool, 8,
                       sizeof(ngx_http_dato_curl_sock_t))
        != NGX_OK)
    {
        goto failed;
    }

    ngx_queue_init(&bridge->xfers);

    bridge->dummy.fd = (ngx_socket_t) -1;

    bridge->timer.data = &bridge->dummy;
    bridge->timer.handler = ngx_http_dato_curl_timer_handler;
    bridge->timer.log = log;

    /*
     * curl's own timers never keep an exiting worker alive: whoever
     * starts a transfer holds a timer of its own while it matters
     */
    bridge->timer.cancelable = 1;

    bridge->multi = curl_multi_init();
    if (bridge->multi == NULL) {
        ngx_log_error(NGX_LOG_ALERT, log, 0, "dato: curl_multi_init() failed");
        goto failed;
    }

    /* without any of these the multi handle is of no use to the bridge */

    rc = curl_multi_setopt(bridge->multi, CURLMOPT_SOCKETFUNCTION,
                           ngx_http_dato_curl_socket);

    if (rc == CURLM_OK) {
        rc = curl_multi_setopt(bridge->multi, CURLMOPT_SOCKETDATA, bridge);
    }

    if (rc == CURLM_OK) {
        rc = curl_multi_setopt(bridge->multi, CURLMOPT_TIMERFUNCTION,
                               ngx_http_dato_curl_timer);
    }

    if (rc == CURLM_OK) {
        rc = curl_multi_setopt(bridge->multi, CURLMOPT_TIMERDATA, bridge);
    }

    if (rc != CURLM_OK) {
        ngx_http_dato_curl_failed(bridge, rc, "curl_multi_setopt");

        rc = curl_multi_cleanup(bridge->multi);

        if (rc != CURLM_OK) {
            ngx_http_dato_curl_failed(bridge, rc, "curl_multi_cleanup");
        }

        goto failed;
    }

    return bridge;

failed:

    ngx_destroy_pool(pool);
    curl_global_cleanup();
    return NULL;
}


void
ngx_http_dato_curl_destroy(ngx_http_dato_curl_t *bridge)
{
    CURLMcode                   rc;
    ngx_http_dato_curl_sock_t  *sock;

    ngx_http_dato_curl_abort(bridge);

    if (bridge->timer.timer_set) {
        ngx_del_timer(&bridge->timer);
    }

    /* closes the cached connections through ngx_http_dato_curl_close */

    rc = curl_multi_cleanup(bridge->multi);

    if (rc != CURLM_OK) {
        ngx_http_dato_curl_failed(bridge, rc, "curl_multi_cleanup");
    }

    /*
     * what is left, curl closed behind the close callback; or, when the
     * cleanup failed, curl has left it open
     */

    while (bridge->socks.nelts) {
        sock = bridge->socks.elts;

        if (ngx_http_dato_curl_owned(sock)) {
            (void) ngx_http_dato_curl_shut(bridge, sock);

        } else {
            ngx_http_dato_curl_release(bridge, sock);
        }
    }

    ngx_destroy_pool(bridge->pool);

    curl_global_cleanup();
}


ngx_int_t
ngx_http_dato_curl_start(ngx_http_dato_curl_t *bridge, void *easy,
    ngx_http_dato_curl_host_t *host, ngx_http_dato_curl_done_pt done,
    void *data)
{
    ngx_int_t                   rc;
    ngx_http_dato_curl_xfer_t  *xfer;

    if (bridge->aborted) {
        return NGX_DECLINED;
    }

    xfer = ngx_calloc(sizeof(ngx_http_dato_curl_xfer_t), bridge->log);
    if (xfer == NULL) {
        return NGX_ERROR;
    }

    xfer->bridge = bridge;
    xfer->easy = easy;
    xfer->done = done;
    xfer->data = data;

    curl_easy_setopt(easy, CURLOPT_PRIVATE, xfer);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);

    /*
     * closing goes through the bridge, so that the nginx connection of a
     * socket is gone before its fd number can be handed out again
     */
    curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION,
                     ngx_http_dato_curl_close);
    curl_easy_setopt(easy, CURLOPT_CLOSESOCKETDATA, bridge);
    curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION,
                     ngx_http_dato_curl_open);
    curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, bridge);

    if (host && host->resolver) {
        rc = ngx_http_dato_curl_resolve(xfer, host);

    } else {
        rc = ngx_http_dato_curl_add(xfer);
    }

    if (rc != NGX_OK) {
        ngx_http_dato_curl_free(xfer);
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&bridge->xfers, &xfer->queue);

    return NGX_OK;
}


static ngx_int_t
ngx_http_dato_curl_add(ngx_http_dato_curl_xfer_t *xfer)
{
    CURLMcode  rc;

    rc = curl_multi_add_handle(xfer->bridge->multi, xfer->easy);

    if (rc != CURLM_OK) {
        ngx_http_dato_curl_failed(xfer->bridge, rc, "curl_multi_add_handle");
        return NGX_ERROR;
    }

    xfer->added = 1;

    return NGX_OK;
}


/*
 * As proxy_pass with variables does: nginx's resolver answers from its
 * cache while the answer is valid ("valid=" or the TTL), and asks the
 * name servers otherwise, without blocking; the transfer waits meanwhile.
 */

static ngx_int_t
ngx_http_dato_curl_resolve(ngx_http_dato_curl_xfer_t *xfer,
    ngx_http_dato_curl_host_t *host)
{
    ngx_resolver_ctx_t  *ctx;

    /* host names only come here: no IP literal to check first */

    ctx = ngx_resolve_start(host->resolver, NULL);

    if (ctx == NULL || ctx == NGX_NO_RESOLVER) {
        return NGX_ERROR;
    }

    ctx->name = host->name;
    ctx->handler = ngx_http_dato_curl_resolved;
    ctx->data = xfer;
    ctx->timeout = host->timeout;

    xfer->host = host;
    xfer->ctx = ctx;
    xfer->starting = 1;

    if (ngx_resolve_name(ctx) != NGX_OK) {

        /* nginx has freed the context */

        xfer->ctx = NULL;
        return NGX_ERROR;
    }

    xfer->starting = 0;

    if (xfer->ctx) {

        /* a query is out: ngx_http_dato_curl_resolved() goes on */
        return NGX_OK;
    }

    /* nginx's cache has answered, inside ngx_resolve_name() */

    if (xfer->rc == CURLE_OK) {
        return ngx_http_dato_curl_add(xfer);
    }

    /* the caller learns of a failure through its callback, as of others */

    xfer->failed.handler = ngx_http_dato_curl_fail;
    xfer->failed.data = xfer;
    xfer->failed.log = xfer->bridge->log;

    ngx_post_event(&xfer->failed, &ngx_posted_events);

    return NGX_OK;
}


static void
ngx_http_dato_curl_resolved(ngx_resolver_ctx_t *ctx)
{
    ngx_http_dato_curl_xfer_t  *xfer = ctx->data;

    xfer->rc = ngx_http_dato_curl_point(xfer, ctx);

    ngx_resolve_name_done(ctx);
    xfer->ctx = NULL;

    if (xfer->starting) {
        return;
    }

    if (xfer->rc == CURLE_OK) {
        if (ngx_http_dato_curl_add(xfer) == NGX_OK) {
            return;
        }

        xfer->rc = CURLE_OUT_OF_MEMORY;
    }

    ngx_http_dato_curl_finish(xfer->bridge, xfer, xfer->rc);
}


/*
 * curl is told to connect to "KEY.NAME", which CURLOPT_RESOLVE maps to
 * the addresses found, KEY being a hash of them.  curl reuses a kept-alive
 * connection only for the same connect-to name: when the addresses change,
 * calls go to the new ones at once, and the old connections idle out.
 * The Host header, SNI and certificate checks stay with the URL's host.
 */

static CURLcode
ngx_http_dato_curl_point(ngx_http_dato_curl_xfer_t *xfer,
    ngx_resolver_ctx_t *ctx)
{
    u_char                     *buf, *list, *p;
    u_char                      to[sizeof("::12345678.:")
                                   + NGX_HTTP_DATO_CURL_NAME_MAX];
    size_t                      len, room;
    uint32_t                    key;
    ngx_uint_t                  i, level, v6;
    ngx_log_t                  *log;
    ngx_http_dato_curl_host_t  *host;

    host = xfer->host;
    log = xfer->bridge->log;

    if (ctx->state) {

        /* once per outage, not once per call */

        if (!host->failed) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "dato: \"%V\" could not be resolved (%i: %s); "
                          "calls to it fail until it is",
                          &host->name, ctx->state,
                          ngx_resolver_strerror(ctx->state));
            host->failed = 1;

        } else {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                           "dato: \"%V\" still not resolved: %s",
                           &host->name, ngx_resolver_strerror(ctx->state));
        }

        return CURLE_COULDNT_RESOLVE_HOST;
    }

    /* the list is written after room for "+KEY.NAME:PORT:", then moved */

    room = sizeof("+12345678.:65535:") - 1 + host->name.len;

    buf = ngx_alloc(room + ctx->naddrs * (NGX_SOCKADDR_STRLEN + 3) + 1, log);
    if (buf == NULL) {
        return CURLE_OUT_OF_MEMORY;
    }

    list = buf + room;
    p = list;
    key = 0;

    for (i = 0; i < ctx->naddrs; i++) {
        v6 = (ctx->addrs[i].sockaddr->sa_family == AF_INET6);

        if (i) {
            *p++ = ',';
        }

        if (v6) {
            *p++ = '[';
        }

        len = ngx_sock_ntop(ctx->addrs[i].sockaddr, ctx->addrs[i].socklen,
                            p, NGX_SOCKADDR_STRLEN, 0);

        /* a sum: nginx hands out the same addresses in turning orders */

        key += ngx_crc32_short(p, len);
        p += len;

        if (v6) {
            *p++ = ']';
        }
    }

    len = p - list;

    p = ngx_sprintf(buf, "+%08xD.%V:%d:", key, &host->name, (int) host->port);
    p = ngx_movemem(p, list, len);
    *p = '\0';

    list = p - len;

    if (host->failed || key != host->key) {
        level = host->failed ? NGX_LOG_WARN
                             : host->key ? NGX_LOG_NOTICE : NGX_LOG_INFO;

        ngx_log_error(level, log, 0, "dato: \"%V\" %s %*s",
                      &host->name,
                      host->failed ? "is resolved again, to" : "resolves to",
                      len, list);

        host->failed = 0;
        host->key = key;
    }

    (void) ngx_sprintf(to, "::%08xD.%V:%Z", key, &host->name);

    /* "+": curl's cache forgets the entry, so that it holds no old ones */

    xfer->resolve = curl_slist_append(NULL, (char *) buf);
    xfer->connect_to = curl_slist_append(NULL, (char *) to);

    ngx_free(buf);

    if (xfer->resolve == NULL || xfer->connect_to == NULL) {
        return CURLE_OUT_OF_MEMORY;
    }

    curl_easy_setopt(xfer->easy, CURLOPT_RESOLVE, xfer->resolve);
    curl_easy_setopt(xfer->easy, CURLOPT_CONNECT_TO, xfer->connect_to);

    return CURLE_OK;
}


static void
ngx_http_dato_curl_fail(ngx_event_t *ev)
{
    ngx_http_dato_curl_xfer_t  *xfer = ev->data;

    ngx_http_dato_curl_finish(xfer->bridge, xfer, xfer->rc);
}


/* a transfer that never ran: the caller owns its handle again */

static void
ngx_http_dato_curl_free(ngx_http_dato_curl_xfer_t *xfer)
{
    if (xfer->resolve) {
        curl_slist_free_all(xfer->resolve);
    }

    if (xfer->connect_to) {
        curl_slist_free_all(xfer->connect_to);
    }

    ngx_free(xfer);
}


static int
ngx_http_dato_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
    ngx_http_dato_curl_t  *bridge = userp;

    ngx_event_t                *rev, *wev;
    ngx_connection_t           *c;
    ngx_http_dato_curl_sock_t  *sock;

    /*
     * socketp is not trusted: curl may report a socket that it has already
     * closed through ngx_http_dato_curl_close, whose connection is freed
     */

    sock = ngx_http_dato_curl_find(bridge, s);

    if (what == CURL_POLL_REMOVE) {

        /*
         * the connection stays known until curl closes the socket: curl
         * may keep it for reuse and poll it again later
         */

        if (sock == NULL) {
            return 0;
        }

        /*
         * curl 7.88 closes a socket that never connected without the close
         * callback (an abort, a failed connect) and tells of it only now:
         * epoll has dropped it with the close already, and its number may
         * be another file's
         */

        if (!ngx_http_dato_curl_owned(sock)) {
            ngx_http_dato_curl_release(bridge, sock);
            return 0;
        }

        c = sock->c;

        if (c == NULL) {
            return 0;
        }

        if (c->read->active) {
            ngx_del_event(c->read, NGX_READ_EVENT, 0);
        }

        if (c->write->active) {
            ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
        }

        return 0;
    }

    if (sock == NULL) {

        /* every socket of the bridge's transfers comes from its callback */

        ngx_log_error(NGX_LOG_ALERT, bridge->log, 0,
                      "dato: curl polls socket %d, which the bridge did not "
                      "open", (int) s);

        sock = ngx_http_dato_curl_record(bridge, s);
        if (sock == NULL) {
            return -1;
        }
    }

    if (sock->c == NULL
        && ngx_http_dato_curl_connection(bridge, sock) != NGX_OK)
    {
        return -1;
    }

    c = sock->c;
    rev = c->read;
    wev = c->write;

    /* level-triggered (flags 0), as curl expects of a poll loop */

    if (what & CURL_POLL_IN) {
        if (!rev->active && ngx_add_event(rev, NGX_READ_EVENT, 0) != NGX_OK) {
            return -1;
        }

    } else if (rev->active) {
        ngx_del_event(rev, NGX_READ_EVENT, 0);
    }

    if (what & CURL_POLL_OUT) {
        if (!wev->active && ngx_add_event(wev, NGX_WRITE_EVENT, 0) != NGX_OK)
        {
            return -1;
        }

    } else if (wev->active) {
        ngx_del_event(wev, NGX_WRITE_EVENT, 0);
    }

    return 0;
}


static int
ngx_http_dato_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    ngx_http_dato_curl_t  *bridge = userp;

    if (bridge->timer.timer_set) {
        ngx_del_timer(&bridge->timer);
    }

    if (timeout_ms >= 0) {
        ngx_add_timer(&bridge->timer, (ngx_msec_t) timeout_ms);
    }

    return 0;
}


static curl_socket_t
ngx_http_dato_curl_open(void *clientp, curlsocktype purpose,
    struct curl_sockaddr *addr)
{
    ngx_http_dato_curl_t  *bridge = clientp;

    ngx_socket_t                s;
    ngx_http_dato_curl_sock_t  *sock;

    s = ngx_socket(addr->family, addr->socktype, addr->protocol);

    if (s == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ERR, bridge->log, ngx_socket_errno,
                      "dato: " ngx_socket_n " failed");
        return CURL_SOCKET_BAD;
    }

    sock = ngx_http_dato_curl_find(bridge, s);

    if (sock == NULL) {
        sock = ngx_http_dato_curl_record(bridge, s);

        if (sock == NULL) {
            goto failed;
        }

        /*
         * the socket's nginx connection is taken now, not when curl first
         * polls it: without a free one (worker_connections) this call
         * fails to connect and is retried, where a failed socket callback
         * would leave curl's multi handle dead for every call
         */

        if (ngx_http_dato_curl_connection(bridge, sock) != NGX_OK) {
            ngx_http_dato_curl_release(bridge, sock);
            goto failed;
        }

        return s;
    }

    /*
     * the number was free: the socket the bridge knew by it was closed
     * behind its back (see ngx_http_dato_curl_socket()), and curl, which
     * never said so, may go on polling the number without saying so either
     */

    if (ngx_http_dato_curl_renew(sock, bridge->log) == NGX_OK) {
        return s;
    }

    ngx_http_dato_curl_release(bridge, sock);

failed:

    if (ngx_close_socket(s) == -1) {
        ngx_log_error(NGX_LOG_ALERT, bridge->log, ngx_socket_errno,
                      "dato: " ngx_close_socket_n " %d failed", s);
    }

    return CURL_SOCKET_BAD;
}


/* the nginx connection through which the event loop watches a socket */

static ngx_int_t
ngx_http_dato_curl_connection(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_sock_t *sock)
{
    ngx_connection_t  *c;

    c = ngx_get_connection(sock->fd, bridge->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    sock->c = c;

    c->data = bridge;
    c->log = bridge->log;
    c->read->log = bridge->log;
    c->write->log = bridge->log;
    c->read->handler = ngx_http_dato_curl_event_handler;
    c->write->handler = ngx_http_dato_curl_event_handler;

    return NGX_OK;
}


/*
 * A record kept for a new socket at an old number: the old socket's
 * events, which the kernel dropped with it (epoll) or which wait on its
 * number (poll, select), are the new socket's, as curl counts them.
 */

static ngx_int_t
ngx_http_dato_curl_renew(ngx_http_dato_curl_sock_t *sock, ngx_log_t *log)
{
    ngx_uint_t         read, write;
    ngx_connection_t  *c;

    if (ngx_http_dato_curl_identify(sock, log) != NGX_OK) {
        return NGX_ERROR;
    }

    c = sock->c;

    if (c == NULL) {
        return NGX_OK;
    }

    read = c->read->active;
    write = c->write->active;

    ngx_http_dato_curl_unwatch(c);

    if (read && ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    if (write && ngx_add_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static int
ngx_http_dato_curl_close(void *clientp, curl_socket_t s)
{
    ngx_http_dato_curl_t  *bridge = clientp;

    ngx_http_dato_curl_sock_t  *sock;

    sock = ngx_http_dato_curl_find(bridge, s);

    if (sock == NULL) {

        /* not one of the bridge's: closed as curl would have */

        return close(s);
    }

    return ngx_http_dato_curl_shut(bridge, sock);
}


/* a socket of the bridge's, closed with its connection */

static int
ngx_http_dato_curl_shut(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_sock_t *sock)
{
    ngx_socket_t       s;
    ngx_connection_t  *c;

    s = sock->fd;
    c = sock->c;

    ngx_http_dato_curl_drop(bridge, sock);

    if (c == NULL) {
        return close(s);
    }

    ngx_close_connection(c);

    return 0;
}


static void
ngx_http_dato_curl_event_handler(ngx_event_t *ev)
{
    int                    mask, running;
    CURLMcode              rc;
    ngx_connection_t      *c;
    ngx_http_dato_curl_t  *bridge;

    c = ev->data;
    bridge = c->data;

    if (c->close) {

        /*
         * nginx closes every connection at worker_shutdown_timeout; these
         * belong to curl, and whoever started the transfers decides
         * through ngx_http_dato_curl_abort()
         */

        c->close = 0;
        return;
    }

    mask = ev->write ? CURL_CSELECT_OUT : CURL_CSELECT_IN;

    if (ev->error) {
        mask |= CURL_CSELECT_ERR;
    }

    /* c may be closed and freed inside; it is not used after this */

    rc = curl_multi_socket_action(bridge->multi, c->fd, mask, &running);

    if (rc != CURLM_OK) {
        ngx_http_dato_curl_failed(bridge, rc, "curl_multi_socket_action");
    }

    ngx_http_dato_curl_done(bridge);
}


static void
ngx_http_dato_curl_timer_handler(ngx_event_t *ev)
{
    int                    running;
    CURLMcode              rc;
    ngx_http_dato_curl_t  *bridge;

    bridge = (ngx_http_dato_curl_t *)
                 ((u_char *) ev - offsetof(ngx_http_dato_curl_t, timer));

    rc = curl_multi_socket_action(bridge->multi, CURL_SOCKET_TIMEOUT, 0,
                                  &running);

    if (rc != CURLM_OK) {
        ngx_http_dato_curl_failed(bridge, rc, "curl_multi_socket_action");
    }

    ngx_http_dato_curl_done(bridge);
}


static void
ngx_http_dato_curl_done(ngx_http_dato_curl_t *bridge)
{
    int                         left;
    CURLMsg                    *msg;
    ngx_http_dato_curl_xfer_t  *xfer;

    while ((msg = curl_multi_info_read(bridge->multi, &left)) != NULL) {

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }

        xfer = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &xfer);

        if (xfer == NULL) {
            continue;
        }

        ngx_http_dato_curl_finish(bridge, xfer, msg->data.result);
    }
}


static void
ngx_http_dato_curl_finish(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_xfer_t *xfer, CURLcode rc)
{
    CURL                        *easy;
    void                        *data;
    CURLMcode                    mrc;
    struct curl_slist           *resolve, *connect_to;
    ngx_http_dato_curl_done_pt   done;

    if (xfer->ctx) {

        /* aborted while resolving: nginx forgets the context */

        ngx_resolve_name_done(xfer->ctx);
        xfer->ctx = NULL;
    }

    if (xfer->failed.posted) {
        ngx_delete_posted_event(&xfer->failed);
    }

    easy = xfer->easy;
    done = xfer->done;
    data = xfer->data;
    resolve = xfer->resolve;
    connect_to = xfer->connect_to;

    ngx_queue_remove(&xfer->queue);

    if (xfer->added) {
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);

        mrc = curl_multi_remove_handle(bridge->multi, easy);

        if (mrc != CURLM_OK) {
            ngx_http_dato_curl_failed(bridge, mrc, "curl_multi_remove_handle");
        }
    }

    ngx_free(xfer);

    done(data, easy, rc);

    /* the lists outlive the handle, which the callee has cleaned up */

    if (resolve) {
        curl_slist_free_all(resolve);
    }

    if (connect_to) {
        curl_slist_free_all(connect_to);
    }
}


/* ends every transfer now and refuses new ones */

void
ngx_http_dato_curl_abort(ngx_http_dato_curl_t *bridge)
{
    ngx_queue_t                *q;
    ngx_http_dato_curl_xfer_t  *xfer;

    bridge->aborted = 1;

    while (!ngx_queue_empty(&bridge->xfers)) {
        q = ngx_queue_head(&bridge->xfers);
        xfer = ngx_queue_data(q, ngx_http_dato_curl_xfer_t, queue);

        ngx_http_dato_curl_finish(bridge, xfer, CURLE_ABORTED_BY_CALLBACK);
    }
}


/*
 * A CURLMcode other than CURLM_OK, logged as curl's multi-socket examples
 * do: at alert when the multi handle is of no more use (every transfer in
 * it fails, for good or until it is empty), at error when one call failed.
 */

static void
ngx_http_dato_curl_failed(ngx_http_dato_curl_t *bridge, CURLMcode rc,
    const char *call)
{
    ngx_uint_t  level;

    switch (rc) {
    case CURLM_BAD_HANDLE:
    case CURLM_OUT_OF_MEMORY:
    case CURLM_INTERNAL_ERROR:
    case CURLM_ABORTED_BY_CALLBACK:
    case CURLM_UNRECOVERABLE_POLL:
        level = NGX_LOG_ALERT;
        break;

    default:
        level = NGX_LOG_ERR;
    }

    ngx_log_error(level, bridge->log, 0, "dato: %s() failed: %s",
                  call, curl_multi_strerror(rc));
}


/* a socket the bridge has opened, or that curl polls, made known */

static ngx_http_dato_curl_sock_t *
ngx_http_dato_curl_record(ngx_http_dato_curl_t *bridge, ngx_socket_t s)
{
    ngx_http_dato_curl_sock_t  *sock;

    sock = ngx_array_push(&bridge->socks);
    if (sock == NULL) {
        return NULL;
    }

    sock->fd = s;
    sock->c = NULL;

    if (ngx_http_dato_curl_identify(sock, bridge->log) != NGX_OK) {
        bridge->socks.nelts--;
        return NULL;
    }

    return sock;
}


static ngx_int_t
ngx_http_dato_curl_identify(ngx_http_dato_curl_sock_t *sock, ngx_log_t *log)
{
    ngx_file_info_t  fi;

    if (ngx_fd_info(sock->fd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "dato: " ngx_fd_info_n " of socket %d failed",
                      sock->fd);
        return NGX_ERROR;
    }

    sock->uniq = ngx_file_uniq(&fi);

    return NGX_OK;
}


static ngx_http_dato_curl_sock_t *
ngx_http_dato_curl_find(ngx_http_dato_curl_t *bridge, curl_socket_t s)
{
    ngx_uint_t                  i;
    ngx_http_dato_curl_sock_t  *socks;

    socks = bridge->socks.elts;

    for (i = 0; i < bridge->socks.nelts; i++) {
        if (socks[i].fd == s) {
            return &socks[i];
        }
    }

    return NULL;
}


/*
 * Whether the number is still the socket the bridge opened: another file
 * or socket that got the number after it has another inode.
 */

static ngx_uint_t
ngx_http_dato_curl_owned(ngx_http_dato_curl_sock_t *sock)
{
    ngx_file_info_t  fi;

    if (ngx_fd_info(sock->fd, &fi) == NGX_FILE_ERROR) {
        return 0;
    }

    return S_ISSOCK(fi.st_mode) && ngx_file_uniq(&fi) == sock->uniq;
}


/*
 * The events of a connection whose socket is closed already, let go as
 * ngx_close_connection() does before a close: no epoll call (the kernel
 * has dropped them), and out of poll's and select's lists.
 */

static void
ngx_http_dato_curl_unwatch(ngx_connection_t *c)
{
    if (c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }
}


/*
 * A socket closed behind the bridge's back: its connection is freed, with
 * no close.  The fd stays set until the connection is free, as in
 * ngx_close_connection(): poll's table of connections by fd is cleared
 * by it, and nginx's loops over connections skip those with fd -1.
 */

static void
ngx_http_dato_curl_release(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_sock_t *sock)
{
    ngx_connection_t  *c;

    c = sock->c;

    ngx_http_dato_curl_drop(bridge, sock);

    if (c == NULL) {
        return;
    }

    ngx_http_dato_curl_unwatch(c);

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}


/* sock points to another record, or past the last, afterwards */

static void
ngx_http_dato_curl_drop(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_sock_t *sock)
{
    ngx_http_dato_curl_sock_t  *last;

    last = (ngx_http_dato_curl_sock_t *) bridge->socks.elts
           + bridge->socks.nelts - 1;

    *sock = *last;
    bridge->socks.nelts--;
}
