
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include "ngx_http_dato_curl.h"


typedef struct {
    ngx_queue_t                  queue;
    CURL                        *easy;
    ngx_http_dato_curl_done_pt   done;
    void                        *data;
} ngx_http_dato_curl_xfer_t;


struct ngx_http_dato_curl_s {
    CURLM                       *multi;
    ngx_log_t                   *log;
    ngx_pool_t                  *pool;

    /* curl's sockets as nginx connections; few, so a plain array */
    ngx_array_t                  conns;

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
static int ngx_http_dato_curl_close(void *clientp, curl_socket_t s);
static void ngx_http_dato_curl_forget(ngx_http_dato_curl_t *bridge,
    curl_socket_t s);
static void ngx_http_dato_curl_event_handler(ngx_event_t *ev);
static void ngx_http_dato_curl_timer_handler(ngx_event_t *ev);
static void ngx_http_dato_curl_done(ngx_http_dato_curl_t *bridge);
static void ngx_http_dato_curl_finish(ngx_http_dato_curl_t *bridge,
    ngx_http_dato_curl_xfer_t *xfer, CURLcode rc);
static ngx_connection_t *ngx_http_dato_curl_find(ngx_http_dato_curl_t *bridge,
    curl_socket_t s, ngx_uint_t remove);


ngx_http_dato_curl_t *
ngx_http_dato_curl_create(ngx_log_t *log)
{
    ngx_pool_t            *pool;
    ngx_http_dato_curl_t  *bridge;

    pool = ngx_create_pool(1024, log);
    if (pool == NULL) {
        return NULL;
    }

    bridge = ngx_pcalloc(pool, sizeof(ngx_http_dato_curl_t));
    if (bridge == NULL) {
        goto failed;
    }

    bridge->pool = pool;
    bridge->log = log;

    if (ngx_array_init(&bridge->conns, pool, 8, sizeof(ngx_connection_t *))
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
        goto failed;
    }

    curl_multi_setopt(bridge->multi, CURLMOPT_SOCKETFUNCTION,
                      ngx_http_dato_curl_socket);
    curl_multi_setopt(bridge->multi, CURLMOPT_SOCKETDATA, bridge);
    curl_multi_setopt(bridge->multi, CURLMOPT_TIMERFUNCTION,
                      ngx_http_dato_curl_timer);
    curl_multi_setopt(bridge->multi, CURLMOPT_TIMERDATA, bridge);

    return bridge;

failed:

    ngx_destroy_pool(pool);
    return NULL;
}


void
ngx_http_dato_curl_destroy(ngx_http_dato_curl_t *bridge)
{
    ngx_http_dato_curl_abort(bridge);

    if (bridge->timer.timer_set) {
        ngx_del_timer(&bridge->timer);
    }

    /* closes the cached connections through ngx_http_dato_curl_close */
    curl_multi_cleanup(bridge->multi);

    ngx_destroy_pool(bridge->pool);
}


ngx_int_t
ngx_http_dato_curl_start(ngx_http_dato_curl_t *bridge, CURL *easy,
    ngx_http_dato_curl_done_pt done, void *data)
{
    ngx_http_dato_curl_xfer_t  *xfer;

    if (bridge->aborted) {
        return NGX_DECLINED;
    }

    xfer = ngx_alloc(sizeof(ngx_http_dato_curl_xfer_t), bridge->log);
    if (xfer == NULL) {
        return NGX_ERROR;
    }

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

    if (curl_multi_add_handle(bridge->multi, easy) != CURLM_OK) {
        ngx_free(xfer);
        return NGX_ERROR;
    }

    ngx_queue_insert_tail(&bridge->xfers, &xfer->queue);

    return NGX_OK;
}


static int
ngx_http_dato_curl_socket(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
    ngx_http_dato_curl_t  *bridge = userp;

    ngx_event_t        *rev, *wev;
    ngx_connection_t   *c, **cp;

    /*
     * socketp is not trusted: curl may report a socket that it has already
     * closed through ngx_http_dato_curl_close, whose connection is freed
     */

    c = ngx_http_dato_curl_find(bridge, s, 0);

    if (what == CURL_POLL_REMOVE) {

        /*
         * the connection stays known until curl closes the socket: curl
         * may keep it for reuse and poll it again later
         */

        if (c) {

            /*
             * curl 7.88 closes a socket that never connected without the
             * close callback (an abort, a failed connect) and tells of it
             * only now: epoll has dropped it with the close already
             */

            if (fcntl(s, F_GETFD) == -1 && ngx_errno == NGX_EBADF) {
                ngx_http_dato_curl_forget(bridge, s);
                return 0;
            }

            if (c->read->active) {
                ngx_del_event(c->read, NGX_READ_EVENT, 0);
            }

            if (c->write->active) {
                ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
            }
        }

        return 0;
    }

    if (c == NULL) {
        c = ngx_get_connection(s, bridge->log);
        if (c == NULL) {
            return -1;
        }

        cp = ngx_array_push(&bridge->conns);
        if (cp == NULL) {
            ngx_free_connection(c);
            return -1;
        }

        *cp = c;

        c->data = bridge;
        c->log = bridge->log;
        c->read->log = bridge->log;
        c->write->log = bridge->log;
        c->read->handler = ngx_http_dato_curl_event_handler;
        c->write->handler = ngx_http_dato_curl_event_handler;
    }

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

    ngx_socket_t  s;

    s = ngx_socket(addr->family, addr->socktype, addr->protocol);

    if (s == (ngx_socket_t) -1) {
        return CURL_SOCKET_BAD;
    }

    /*
     * the number was free: a connection still known by it lost its socket
     * behind the bridge's back (see ngx_http_dato_curl_socket())
     */

    ngx_http_dato_curl_forget(bridge, s);

    return s;
}


static int
ngx_http_dato_curl_close(void *clientp, curl_socket_t s)
{
    ngx_http_dato_curl_t  *bridge = clientp;

    ngx_connection_t  *c;

    c = ngx_http_dato_curl_find(bridge, s, 1);

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

    curl_multi_socket_action(bridge->multi, c->fd, mask, &running);

    ngx_http_dato_curl_done(bridge);
}


static void
ngx_http_dato_curl_timer_handler(ngx_event_t *ev)
{
    int                    running;
    ngx_http_dato_curl_t  *bridge;

    bridge = (ngx_http_dato_curl_t *)
                 ((u_char *) ev - offsetof(ngx_http_dato_curl_t, timer));

    curl_multi_socket_action(bridge->multi, CURL_SOCKET_TIMEOUT, 0, &running);

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
    ngx_http_dato_curl_done_pt   done;

    easy = xfer->easy;
    done = xfer->done;
    data = xfer->data;

    ngx_queue_remove(&xfer->queue);
    ngx_free(xfer);

    curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    curl_multi_remove_handle(bridge->multi, easy);

    done(data, easy, rc);
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


/* the connection of a socket already closed: no epoll call, no close */

static void
ngx_http_dato_curl_forget(ngx_http_dato_curl_t *bridge, curl_socket_t s)
{
    ngx_connection_t  *c;

    c = ngx_http_dato_curl_find(bridge, s, 1);

    if (c == NULL) {
        return;
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->read->active = 0;
    c->write->active = 0;
    c->fd = (ngx_socket_t) -1;

    ngx_free_connection(c);
}


static ngx_connection_t *
ngx_http_dato_curl_find(ngx_http_dato_curl_t *bridge, curl_socket_t s,
    ngx_uint_t remove)
{
    ngx_uint_t          i;
    ngx_connection_t  **conns, *c;

    conns = bridge->conns.elts;

    for (i = 0; i < bridge->conns.nelts; i++) {
        if (conns[i]->fd != s) {
            continue;
        }

        c = conns[i];

        if (remove) {
            conns[i] = conns[bridge->conns.nelts - 1];
            bridge->conns.nelts--;
        }

        return c;
    }

    return NULL;
}
