#!/usr/bin/perl

# TLS to the API (issue 5): peers are always verified.  An HTTPS server in
# the same nginx, with a self-signed certificate made now, stands in front
# of the mock; the module's calls to it fail without dato_api_ca_file and
# work with it, by IP address and by DNS name.  A CA file that is not the
# peer's, one that is not PEM, and a certificate for another name are all
# refused; a missing CA file fails "nginx -t".

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(hook post_req);

my $TOKEN = 'tok-SECRET-8c1f';

my $openssl = DatoTest::which('openssl');
plan skip_all => 'openssl is not installed' unless $openssl;

my $t = DatoTest->new(workers => 1);
my $tmp = $t->tmpdir;

# certificates, made at test time:
#   cert.pem   CN=localhost, SAN IP:127.0.0.1 DNS:localhost  (the HTTPS server's)
#   other.pem  another self-signed certificate, same names     (a wrong CA)
#   wrong.pem  SAN DNS:wrong.example only                     (a name mismatch)
sub make_cert {
    my ($name, $san) = @_;
    # openssl's progress dots go to openssl.log, not to the TAP stream
    my $rc = system('sh', '-c', 'exec "$@" 2>>"$0" >&2', "$tmp/openssl.log", $openssl, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-subj', '/CN=' . ($san =~ /DNS:([^,]+)/)[0],
                    '-addext', "subjectAltName=$san",
                    '-keyout', "$tmp/$name.key", '-out', "$tmp/$name.pem");
    return $rc == 0 && -s "$tmp/$name.pem";
}

make_cert('cert', 'IP:127.0.0.1,DNS:localhost') or BAIL_OUT('openssl req failed');
make_cert('other', 'IP:127.0.0.1,DNS:localhost') or BAIL_OUT('openssl req failed');
make_cert('wrong', 'DNS:wrong.example') or BAIL_OUT('openssl req failed');
# dato_api_ca_file: the (self-signed) certificate is its own CA
rename "$tmp/cert.key", "$tmp/key.pem";
chmod 0644, "$tmp/key.pem", "$tmp/wrong.key";
$t->write_file('garbage.pem', "-----BEGIN CERTIFICATE-----\nnot a certificate\n"
                              . "-----END CERTIFICATE-----\n");

$t->start_mock('--token', $TOKEN, '--limit', '10000');

# a third port, for the server whose certificate names another host
my $PORT3 = DatoTest::free_port();

# under valgrind a TLS handshake that loads the system's CAs takes seconds
my $SLOW = $ENV{TEST_NGINX_USE_VALGRIND} ? 5 : 1;
my ($RETRY, $WAIT, $API) = (2 * $SLOW, 5 * $SLOW, 2 * $SLOW);

my $common = <<"EOF";
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 50ms;
            dato_retry_timeout ${RETRY}s;
            dato_publish_timeout ${WAIT}s;
            dato_api_timeout ${API}s;
            dato_job_poll off;
EOF

my $conf = <<EOF;
    dato_api_token $TOKEN;

    server {
        listen 127.0.0.1:%%PORT%%;

        # A: HTTPS, no CA file: the system's CAs do not know the certificate
        location /a {
            dato_api_url https://127.0.0.1:%%PORT2%%;
$common
        }

        # B: the certificate as the CA file
        location /b {
            dato_api_url https://127.0.0.1:%%PORT2%%;
            dato_api_ca_file %%TMP%%/cert.pem;
$common
        }

        # C: by DNS name (in the SAN), resolved at configuration time
        location /c {
            dato_api_url https://localhost:%%PORT2%%/;
            dato_api_ca_file %%TMP%%/cert.pem;
$common
        }

        # D: a CA file, but not the one that signed the peer's certificate
        location /d {
            dato_api_url https://127.0.0.1:%%PORT2%%;
            dato_api_ca_file %%TMP%%/other.pem;
$common
        }

        # E: a trusted certificate for another name
        location /e {
            dato_api_url https://127.0.0.1:$PORT3;
            dato_api_ca_file %%TMP%%/wrong.pem;
$common
        }

        # G: a CA file that is no certificate
        location /g {
            dato_api_url https://127.0.0.1:%%PORT2%%;
            dato_api_ca_file %%TMP%%/garbage.pem;
$common
        }

        # the same API over plain HTTP, to show the proxy path itself works
        location /plain {
            dato_api_url %%MOCK%%;
$common
        }
    }

    # HTTPS in front of the mock; its own log, where nginx's debug lines
    # show the proxied Authorization header
    server {
        listen 127.0.0.1:%%PORT2%% ssl;
        error_log %%TMP%%/proxy.log debug;
        ssl_certificate %%TMP%%/cert.pem;
        ssl_certificate_key %%TMP%%/key.pem;
        location / {
            proxy_pass %%MOCK%%;
            proxy_set_header Host \$host;
        }
    }

    server {
        listen 127.0.0.1:$PORT3 ssl;
        error_log %%TMP%%/proxy.log debug;
        ssl_certificate %%TMP%%/wrong.pem;
        ssl_certificate_key %%TMP%%/wrong.key;
        location / {
            proxy_pass %%MOCK%%;
            proxy_set_header Host \$host;
        }
    }
EOF

# nginx -t: a missing CA file is a configuration error
{
    my ($rc, $out) = $t->test_conf(http => <<'EOF');
    dato_api_token tok-SECRET-8c1f;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /x {
            dato_publish;
            dato_api_url https://127.0.0.1:%%PORT2%%;
            dato_api_ca_file /nonexistent.pem;
        }
    }
EOF
    isnt($rc, 0, 'nginx -t fails for dato_api_ca_file /nonexistent.pem');
    like($out, qr/\[emerg\].*nonexistent\.pem/, 'nginx -t names the missing file')
        or diag $out;

    ($rc, $out) = $t->test_conf(http => $conf);
    is($rc, 0, 'nginx -t accepts the test configuration') or diag $out;
}

$t->run(http => $conf);

sub accepted {
    my ($r, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, 202, "$name: 202") or diag $r->{raw} // $r->{error};
    is($r->{json} && $r->{json}{meta}{status}, 'accepted', "$name: accepted");
    like(($r->{json} && ref $r->{json}{data} eq 'ARRAY' && $r->{json}{data}[0]
          ? $r->{json}{data}[0]{id} : '') // '', qr/^\d+$/, "$name: with a job id");
}

# refused: 502 after dato_retry_timeout, or 202 "queued" when the wait
# ended first; either way nothing reached the mock
sub refused {
    my ($r, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $st = $r->{status};
    my $q = $r->{json} && ref $r->{json}{meta} eq 'HASH' ? $r->{json}{meta}{status} // '' : '';
    ok($st == 502 || ($st == 202 && $q eq 'queued'), "$name: 502 (got $st)")
        or diag $r->{raw} // $r->{error};
    if ($st == 502) {
        my $e = $r->{json} && $r->{json}{errors} ? $r->{json}{errors}[0] : {};
        is($e->{status}, '502', "$name: JSON error");
        like($e->{detail} // '', qr/did not answer/, "$name: DatoCMS did not answer");
    }
}

my $A = DatoTest::uuid_id(1);
my $B = DatoTest::uuid_id(2);
my $C = DatoTest::uuid_id(3);

# the plain path, as a baseline
{
    $t->mock_reset;
    my $r = $t->post_json('/plain', hook(DatoTest::uuid_id(9)));
    accepted($r, 'plain http');
}

# B: with the CA file
{
    $t->mock_reset;
    my $r = $t->post_json('/b', hook($B));
    accepted($r, 'https://127.0.0.1 with dato_api_ca_file');
    my @p = $t->publishes;
    is(scalar @p, 1, 'B: one call reached the mock through HTTPS');
    is_deeply($p[0] && $p[0]{ids}, [$B], 'B: the mock got the id');
    is($p[0] && $p[0]{headers}{authorization}, "Bearer $TOKEN", 'B: with the token');
    is($p[0] && $p[0]{job}, $r->{json} && $r->{json}{data}[0]{id}, 'B: the job is the mock\'s');
}

# C: by name
{
    $t->mock_reset;
    my $r = $t->post_json('/c', hook($C));
    accepted($r, 'https://localhost with dato_api_ca_file');
    my @p = $t->publishes;
    is_deeply([ map { @{ $_->{ids} } } @p ], [$C], 'C: the mock got the id');
    like($p[0] ? $p[0]{headers}{host} : '', qr/^localhost(?::\d+)?$/, 'C: Host: localhost');
}

# A, D, E, G: refused, in parallel (each waits up to dato_retry_timeout)
{
    $t->mock_reset;
    my $mark = $t->log_mark;
    my %id = (a => DatoTest::uuid_id(11), d => DatoTest::uuid_id(14),
              e => DatoTest::uuid_id(15), g => DatoTest::uuid_id(17));
    my @k = sort keys %id;
    my $t0 = Time::HiRes::time();
    my @r = $t->parallel_requests([ map { post_req("/$_", hook($id{$_})) } @k ],
                                  timeout => 12 * $SLOW);
    DatoTest::add_json($_) for @r;
    my $dt = Time::HiRes::time() - $t0;
    my %name = (a => 'A: self-signed peer, no CA file',
                d => 'D: CA file of another certificate',
                e => 'E: trusted certificate for another name',
                g => 'G: CA file that is not a certificate');
    refused($r[$_], $name{ $k[$_] }) for 0 .. $#k;
    cmp_ok($dt, '<', 8 * $SLOW, sprintf('refusals answered in %.1f s', $dt));

    Time::HiRes::sleep(0.3);
    my @p = $t->publishes;
    is(scalar @p, 0, 'no refused call reached the mock')
        or diag explain [ map { $_->{ids} } @p ];

    ok($t->wait_for_log(qr/gave up publishing.*\Q$id{a}\E/, 5, $mark),
       'A: the record is logged as given up');
    my $log = $t->error_log_since($mark);
    for my $k (@k) {
        my ($line) = grep { /gave up publishing/ && /\Q$id{$k}\E/ } split /\n/, $log;
        like($line // '', qr/\[error\]/, "$name{$k}: given up at error level");
    }
    my @why = grep { /bulk publish of 1 record failed|gave up publishing/ } split /\n/, $log;
    like(join("\n", @why), qr/certificate|SSL/i,
         'the failures name the certificate or SSL');
    my ($a_line) = grep { /gave up publishing/ && /\Q$id{a}\E/ } split /\n/, $log;
    like($a_line // '', qr/certificate|SSL|CA/i, 'A: its give-up line names the certificate');
    unlike($log, qr/\Q$TOKEN\E/, 'the module\'s log lines about TLS failures hold no token');
}

# B again after the failures: the CA file still works (no cached failure)
{
    $t->mock_reset;
    my $r = $t->post_json('/b', hook(DatoTest::uuid_id(21)));
    accepted($r, 'B again');
}

$t->stop;

{
    # the HTTPS servers had their own log: nginx's proxy debug lines there
    # show the Authorization header, and must not leak into error.log
    my $elog = $t->error_log;
    unlike($elog, qr/\Q$TOKEN\E/, 'error.log holds no token');
    like($t->read_file('proxy.log') // '', qr/SSL|ssl/, 'the HTTPS servers logged to proxy.log');
}

# nginx's TLS handshake failures, as the module's curl refuses the peer
$t->allow_log(qr/SSL_do_handshake\(\) failed/);

$t->done;
done_testing;
