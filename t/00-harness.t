#!/usr/bin/perl

# Self-test of t/lib/DatoTest.pm, using nginx without the dato module.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use DatoTest;

my $t = DatoTest->new(no_module => 1, workers => 2);

my $http = <<'EOF';
    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;

        location /ret {
            return 202 '{"ok":1}';
        }

        location /small {
            client_max_body_size 1k;
            return 200 "small\n";
        }

        location /small-read {
            client_max_body_size 1k;
            proxy_pass http://127.0.0.1:%%PORT2%%/sink;
        }

        location /echo {
            client_max_body_size 8m;
            client_body_buffer_size 16k;
            proxy_pass http://127.0.0.1:%%PORT2%%/sink;
        }
    }

    server {
        listen 127.0.0.1:%%PORT2%%;
        location /sink {
            client_max_body_size 8m;
            return 200 "len=$content_length\n";
        }
    }
EOF

$t->run(http => $http);
ok($t->port, 'port allocated');
ok(-s $t->tmpdir . '/nginx.pid', 'pid file in temp dir');

# plain GET
my $r = $t->request(path => '/ret');
is($r->{status}, 202, 'GET status');
is($r->{body}, '{"ok":1}', 'GET body');
like($r->{headers}{server} // '', qr/nginx/, 'lowercase header names');
ok($r->{elapsed} >= 0 && $r->{elapsed} < 5, 'elapsed recorded');

my $j = $t->json_request(method => 'POST', path => '/ret', body => { a => 1 });
is($j->{status}, 202, 'json_request status');
is_deeply($j->{json}, { ok => 1 }, 'json_request decoded body');

# chunked request body
my $body = 'x' x 5000;
$r = $t->request(method => 'POST', path => '/echo', body => $body, chunked => 1);
is($r->{status}, 200, 'chunked POST status');
is($r->{body}, "len=5000\n", 'chunked POST body length seen by upstream')
    or diag $r->{raw};

# 2 MB through proxy (client body buffered to a temp file in %%TMP%%/body)
$r = $t->request(method => 'POST', path => '/echo', body => 'y' x (2 << 20));
is($r->{status}, 200, '2 MB POST through proxy');
is($r->{body}, "len=" . (2 << 20) . "\n", '2 MB body length');

# 2 MB to a location limited to 1k
$r = $t->request(method => 'POST', path => '/small', body => 'z' x (2 << 20));
is($r->{status}, 413, '2 MB POST to 1k location: 413');
# (a chunked body is only checked against the limit when it is read)
$r = $t->request(method => 'POST', path => '/small-read', body => 'z' x (2 << 20),
                 chunked => 1);
is($r->{status}, 413, '2 MB chunked POST to 1k location: 413');

# chunked response parsing (proxied response without Content-Length)
# and close-delimited parsing are exercised by the unit checks below
my $p = DatoTest::parse_response(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 0);
is($p->{body}, 'abcde', 'chunked response decoding');
ok(!defined DatoTest::parse_response("HTTP/1.1 200 OK\r\n\r\nabc", 0),
   'close-delimited body waits for EOF');
is(DatoTest::parse_response("HTTP/1.1 200 OK\r\n\r\nabc", 1)->{body}, 'abc',
   'close-delimited body at EOF');
is(DatoTest::parse_response(
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", 0)
    ->{status}, 201, '100 Continue skipped');

# parallel requests
my @rs = $t->parallel_requests([ map { { path => "/ret?$_" } } 1 .. 20 ]);
is(scalar(@rs), 20, '20 parallel responses');
is(scalar(grep { $_->{status} == 202 && $_->{body} eq '{"ok":1}' } @rs), 20,
   'all parallel requests succeeded');

# connection error reporting
$r = $t->request(path => '/', port => DatoTest::free_port(), timeout => 2);
is($r->{status}, 0, 'connection refused gives status 0');
ok($r->{error}, "error set: $r->{error}");

# reload with a changed config
(my $http2 = $http) =~ s/return 202 '\{"ok":1\}'/return 202 '{"ok":2}'/;
ok($t->reload(http => $http2), 'reload');
$r = $t->request(path => '/ret');
is($r->{body}, '{"ok":2}', 'new config active after reload');

# nginx -t
my ($rc, $out) = $t->test_conf(http => "no_such_directive on;\n");
isnt($rc, 0, 'test_conf fails on bad directive');
like($out, qr/unknown directive "no_such_directive"/, 'test_conf output');
($rc, $out) = $t->test_conf(http => $http);
is($rc, 0, 'test_conf succeeds on good config') or diag $out;

# helpers
my $id = DatoTest::uuid_id(42);
like($id, qr/^[A-Za-f][A-Za-z0-9_-]{20}[AQgw]\z/, 'uuid_id format');
is(DatoTest::uuid_id(42), $id, 'uuid_id deterministic');
isnt(DatoTest::uuid_id(43), $id, 'uuid_id distinct');
(my $b64 = $id) =~ tr{-_}{+/};
my $bytes = MIME::Base64::decode_base64("$b64==");
is(length $bytes, 16, 'uuid_id decodes to 16 bytes');
is(ord(substr($bytes, 6, 1)) >> 4, 4, 'uuid version 4');
is(ord(substr($bytes, 8, 1)) >> 6, 2, 'uuid variant RFC 4122');

my $wh = DatoTest::decode_json(DatoTest::webhook(id => $id, event_type => 'publish',
                                                 is_environment_primary => 0));
is($wh->{entity}{id}, $id, 'webhook entity id');
is($wh->{event_type}, 'publish', 'webhook event_type');
ok(!$wh->{is_environment_primary}, 'webhook is_environment_primary false');
is($wh->{environment}, 'main', 'webhook environment default');
is($wh->{entity}{relationships}{item_type}{data}{type}, 'item_type', 'webhook item_type');

ok($t->wait_for_log(qr/reconfiguring/, 2), 'wait_for_log');
ok(!$t->wait_for_log(qr/no such line here/, 0.2), 'wait_for_log times out');
$t->log_like(qr/start worker process/, 'log_like');
$t->log_unlike(qr/no_such_directive/, 'test_conf did not pollute error.log');

my $pid = $t->pid;
$t->done;
ok(!kill(0, $pid), 'nginx master gone after done');

done_testing;
