#!/usr/bin/perl

# DNS (issue 13): the API host is resolved at run time through nginx's own
# resolver when a "resolver" is set, and at configuration time otherwise.
# A DNS server of the test's own (t/dns/dns.pl, UDP on 127.0.0.1) answers
# from a zone file that the test rewrites.
#
#   1. No resolver, a host that cannot be resolved: "nginx -t" passes with
#      a warning, nginx starts, the location answers 503 with Retry-After,
#      nothing reaches the mock, the error log says why (once per 10 s);
#      a reload that finds the host ends it.
#   2. "resolver ... valid=1s", api.dato.test at 127.0.0.1 where the mock
#      listens: webhooks are published, Host is the name; then the zone
#      moves the name to 127.0.0.2, where a second mock listens, under a
#      steady load of webhooks: calls move there without a reload, and
#      every record is published on one of the two.  An IP literal asks
#      no DNS; HTTPS to the name verifies the name, with it as SNI.
#   3. The DNS server does not answer, then answers NXDOMAIN: calls are
#      retried with the usual backoff, and the error log says so once per
#      outage; once the name resolves, the records are published.
#   4. A worker that exits with a resolution in flight (fast stop, and
#      worker_shutdown_timeout) gives its records up cleanly.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook post_req jobs_of);

my $TOKEN = 'tok-dns-7d2a';
my $NAME = 'api.dato.test';

# the lines of error.log from $mark on that match $re
sub log_lines {
    my ($t, $re, $mark) = @_;
    return grep { $_ =~ $re } split /\n/, $t->error_log_since($mark // 0);
}

###########################################################################
# 1. no resolver, the host not found when the configuration is read

{
    my $t = DatoTest->new(workers => 1);
    $t->start_mock('--token', $TOKEN);
    my $port = $t->mock_port;

    my $conf = sub {
        my ($host) = @_;
        return <<"EOF";
    dato_api_token $TOKEN;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /hook {
            dato_publish;
            dato_api_url http://$host:$port;
            dato_publish_wait job;
            dato_job_poll off;
        }

        # another location of the same nginx, with a host it can reach
        location /other {
            dato_publish;
            dato_api_url %%MOCK%%;
            dato_publish_wait job;
            dato_job_poll off;
        }
    }
EOF
    };

    # .invalid is never resolvable (RFC 6761)
    my ($rc, $out) = $t->test_conf(http => $conf->('api.dato.invalid'));
    is($rc, 0, 'no resolver, host not found: nginx -t passes') or diag $out;
    like($out, qr/\[warn\].*host not found in dato_api_url "http:\/\/api\.dato\.invalid:\d+"/,
         'nginx -t warns that the host is not found') or diag $out;
    like($out, qr/answered 503 until a reload/, 'the warning says what follows')
        or diag $out;
    unlike($out, qr/\[emerg\]/, 'no [emerg]');

    $t->run(http => $conf->('api.dato.invalid'));
    my $mark = $t->log_mark;

    my @r = map { $t->post_json('/hook', hook($_)) } ids_of(100, 5);
    is_deeply([ map { $_->{status} } @r ], [ (503) x 5 ], 'the location answers 503')
        or diag explain [ map { $_->{raw} // $_->{error} } @r ];
    is($r[0]{headers}{'retry-after'}, '5', 'with Retry-After: 5');
    is($r[0]{json} && $r[0]{json}{errors}[0]{status}, '503', 'a JSON error');
    like($r[0]{json} ? $r[0]{json}{errors}[0]{detail} : '', qr/could not be resolved/,
         'whose detail says the API host could not be resolved');

    my $ign = $t->post_json('/hook', hook(DatoTest::uuid_id(120), event_type => 'delete'));
    is($ign->{status}, 200, 'an event not to publish is still answered 200 (ignored)');

    my @why = log_lines($t, qr/was not found when the configuration was read/, $mark);
    is(scalar @why, 1, 'the error log says why, once for 5 webhooks')
        or diag join "\n", @why;
    like($why[0] // '', qr/\[error\].*api\.dato\.invalid.*answered 503 until a reload/,
         'at error level, naming the host');

    my $ok = $t->post_json('/other', hook(DatoTest::uuid_id(130)));
    is($ok->{status}, 202, 'another location of the same nginx works');

    my @p = $t->publishes;
    is_deeply([ map { @{ $_->{ids} } } @p ], [ DatoTest::uuid_id(130) ],
              'nothing of the refused webhooks reached the mock');

    # a reload that finds the host ("localhost", from /etc/hosts)
    ok($t->reload(http => $conf->('localhost')), 'reload with a host that resolves');
    my $id = DatoTest::uuid_id(140);
    my $r = $t->post_json('/hook', hook($id));
    is($r->{status}, 202, 'after the reload, webhooks are accepted')
        or diag $r->{raw} // $r->{error};
    ok($t->wait_published(5, $id), 'and published');

    $t->done;
}

###########################################################################
# 2. a resolver, and an address that changes under load

my $openssl = DatoTest::which('openssl');

{
    my $t = DatoTest->new(workers => 2);
    my $tmp = $t->tmpdir;

    $t->start_mock('--token', $TOKEN, '--limit', '100000');
    my $port = $t->mock_port;

    # the second mock: same port, on 127.0.0.2
    my $t2 = DatoTest->new(workers => 1);
    $t2->start_mock('--host', '127.0.0.2', '--port', $port,
                    '--token', $TOKEN, '--limit', '100000');
    is($t2->mock_port, $port, 'a second mock on 127.0.0.2, same port');

    # TLS in front of the first mock, for the name tls.dato.test
    my $tls = 0;
    if ($openssl) {
        my $rc = system('sh', '-c', 'exec "$@" >"$0" 2>&1', "$tmp/openssl.log",
                        $openssl, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
                        '-days', '1', '-subj', '/CN=tls.dato.test',
                        '-addext', 'subjectAltName=DNS:tls.dato.test',
                        '-keyout', "$tmp/key.pem", '-out', "$tmp/cert.pem");
        chmod 0644, "$tmp/key.pem";
        $tls = $rc == 0 && -s "$tmp/cert.pem";
    }

    my $dns_port = $t->dns_port;
    my $tls_conf = $tls ? <<"EOF" : '';
        location /tls {
            dato_publish;
            dato_api_url https://tls.dato.test:%%PORT2%%;
            dato_api_ca_file %%TMP%%/cert.pem;
            dato_publish_wait job;
            dato_job_poll off;
        }
EOF
    my $tls_server = $tls ? <<"EOF" : '';
    log_format sni '\$ssl_server_name \$host';

    server {
        listen 127.0.0.1:%%PORT2%% ssl;
        ssl_certificate %%TMP%%/cert.pem;
        ssl_certificate_key %%TMP%%/key.pem;
        access_log %%TMP%%/sni.log sni;
        location / {
            proxy_pass %%MOCK%%;
            proxy_set_header Host \$host;
        }
    }
EOF

    my $conf = <<"EOF";
    dato_api_token $TOKEN;
    resolver 127.0.0.1:$dns_port valid=1s;
    resolver_timeout 2s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /hook {
            dato_publish;
            dato_api_url http://$NAME:$port;
            dato_publish_wait job;
            dato_publish_timeout 5s;
            dato_job_poll off;
        }

        location /literal {
            dato_publish;
            dato_api_url %%MOCK%%;
            dato_publish_wait job;
            dato_job_poll off;
        }
$tls_conf
    }
$tls_server
EOF

    # nothing is resolved when the configuration is read: no DNS needed
    my ($rc, $out) = $t->test_conf(http => $conf);
    is($rc, 0, 'with a resolver, nginx -t passes while DNS is down') or diag $out;
    unlike($out, qr/\[warn\]|\[emerg\]/, 'without a warning') or diag $out;

    $t->start_dns($NAME => ['127.0.0.1'], 'tls.dato.test' => ['127.0.0.1']);
    $t->run(http => $conf);
    my @workers = $t->worker_pids;

    my @first = ids_of(200, 3);
    my @r = map { $t->post_json('/hook', hook($_)) } @first;
    is_deeply([ map { $_->{status} } @r ], [ (202) x 3 ], 'resolved: webhooks accepted')
        or diag explain [ map { $_->{raw} // $_->{error} } @r ];
    ok(scalar(jobs_of($r[0])), 'with the job of the mock');
    is(scalar $t->published(@first), 3, 'published on the mock at 127.0.0.1');
    my ($p) = $t->publishes;
    is($p && $p->{headers}{host}, "$NAME:$port", 'Host: the name, not the address');
    like($t->error_log, qr/\[info\].*dato: "\Q$NAME\E" resolves to 127\.0\.0\.1/,
         'the address found is logged');
    ok((grep { $_->{name} eq $NAME && $_->{type} eq 'A' } $t->dns_queries),
       'nginx asked the test\'s DNS server');

    # an IP literal: no query
    my $lit = $t->post_json('/literal', hook(DatoTest::uuid_id(210)));
    is($lit->{status}, 202, 'an IP literal URL works with a resolver set');
    ok(!(grep { $_->{name} =~ /^127\./ } $t->dns_queries), 'and asks no DNS');

    SKIP: {
        skip 'openssl is not installed', 4 unless $tls;
        my $id = DatoTest::uuid_id(220);
        my $r = $t->post_json('/tls', hook($id));
        is($r->{status}, 202, 'HTTPS to a name resolved at run time: accepted')
            or diag $r->{raw} // $r->{error};
        is(scalar $t->published($id), 1, 'published through TLS');
        my $sni = $t->read_file('sni.log') // '';
        like($sni, qr/^tls\.dato\.test tls\.dato\.test$/m,
             'SNI and Host are the name') or diag $sni;
        # the certificate names tls.dato.test only, not 127.0.0.1
        unlike($t->error_log, qr/bulk publish of .* failed/,
               'the certificate is verified against the name, at once');
    }

    # steady load: 3 webhooks every 100 ms for 7 s; the name moves at 2 s
    my (@sent, %status, $moved);
    my $n = 1000;
    my $t0 = Time::HiRes::time();
    while ((my $el = Time::HiRes::time() - $t0) < 7) {
        if (!$moved && $el >= 2) {
            $t->dns_set($NAME => ['127.0.0.2'], 'tls.dato.test' => ['127.0.0.1']);
            $moved = Time::HiRes::time();
        }
        my @ids = ids_of($n, 3);
        $n += 3;
        my @res = $t->parallel_requests([ map { post_req('/hook', hook($_)) } @ids ],
                                        timeout => 10);
        for my $i (0 .. $#ids) {
            push @sent, { id => $ids[$i], t => Time::HiRes::time() };
            $status{ $res[$i]{status} }++;
        }
        Time::HiRes::sleep(0.1);
    }

    is_deeply(\%status, { 202 => scalar @sent },
              scalar(@sent) . ' webhooks under load, all answered 202')
        or diag explain \%status;

    my @ids = map { $_->{id} } @sent;
    my %on1 = %{ DatoTest::published_ids($t->calls_for(@ids)) };
    my %on2 = %{ DatoTest::published_ids($t2->calls_for(@ids)) };
    $t->wait_for(sub {
        %on1 = %{ DatoTest::published_ids($t->calls_for(@ids)) };
        %on2 = %{ DatoTest::published_ids($t2->calls_for(@ids)) };
        return !grep { !$on1{$_} && !$on2{$_} } @ids;
    }, 10, 0.2);
    my @lost = grep { !$on1{$_} && !$on2{$_} } @ids;
    ok(!@lost, 'no webhook lost: each record published on one of the two mocks')
        or diag 'lost: ' . join(' ', @lost[0 .. ($#lost < 9 ? $#lost : 9)]);

    my @c1 = $t->calls_for(@ids);
    my @c2 = $t2->calls_for(@ids);
    ok(@c1 && @c2, sprintf('calls on both: %d before the move, %d after',
                           scalar @c1, scalar @c2));
    my $last1 = (sort { $a <=> $b } map { $_->{t} } @c1)[-1] // 0;
    cmp_ok($last1 - $moved, '<', 3,
           sprintf('no call to 127.0.0.1 later than %.1f s after the move '
                   . '(valid=1s, kept-alive connections left)', $last1 - $moved));
    my @late = grep { $_->{t} > $moved + 3 } @sent;
    my %late1 = map { $_ => 1 } grep { $on1{$_} } map { $_->{id} } @late;
    ok(@late && !%late1, scalar(@late) . ' webhooks sent 3 s after the move, all on 127.0.0.2');
    is((scalar grep { $_->{headers}{host} ne "$NAME:$port" } @c2), 0,
       'the second mock saw Host: the name too');

    is_deeply([ $t->worker_pids ], \@workers, 'the same workers: no reload');
    unlike($t->error_log, qr/reconfiguring/, 'no reconfiguration');
    like($t->error_log, qr/\[notice\].*"\Q$NAME\E" resolves to 127\.0\.0\.2/,
         'the new address is logged at notice');
    my @asked = grep { $_->{name} eq $NAME && $_->{type} eq 'A' } $t->dns_queries;
    cmp_ok(scalar @asked, '>=', 4,
           scalar(@asked) . ' A queries: asked again as valid=1s passes');

    $t->stop;
    $t2->stop_mock;
    $t->done;
    $t2->done;
}

###########################################################################
# 3. a resolver that fails at run time: retried, logged once per outage

{
    my $t = DatoTest->new(workers => 1);
    $t->start_mock('--token', $TOKEN);
    my $port = $t->mock_port;

    # DNS up, but mute
    my $dns_port = $t->start_dns('*' => 'drop');

    $t->run(http => <<"EOF");
    dato_api_token $TOKEN;
    resolver 127.0.0.1:$dns_port valid=1s;
    resolver_timeout 1s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /hook {
            dato_publish;
            dato_api_url http://$NAME:$port;
            dato_publish_wait none;
            dato_retry_timeout 30s;
        }
    }
EOF

    my $mark = $t->log_mark;
    my @ids = ids_of(300, 3);
    my @r = map { $t->post_json('/hook', hook($_)) } @ids;
    is_deeply([ map { $_->{status} } @r ], [ (202) x 3 ],
              'DNS not answering: webhooks are queued (202)');

    ok($t->wait_for(sub {
        log_lines($t, qr/bulk publish of .* failed .*retrying/, $mark) >= 3 }, 10),
       'calls are retried with the usual backoff');
    my @err = log_lines($t, qr/\[error\].*could not be resolved/, $mark);
    is(scalar @err, 1, 'the failure is logged at error once, not per call')
        or diag join "\n", @err;
    like($err[0] // '', qr/"\Q$NAME\E" could not be resolved \(110: Operation timed out\)/,
         'naming the host and the reason');
    like(join("\n", log_lines($t, qr/retrying/, $mark)), qr/\[warn\].*resolve host/,
         'the retries say the host was not resolved, at warn');
    is(scalar $t->publishes, 0, 'nothing reached the mock meanwhile');

    $t->dns_set($NAME => ['127.0.0.1']);
    ok($t->wait_published(40, @ids), 'the name resolves: the records are published');
    like($t->error_log_since($mark), qr/\[warn\].*"\Q$NAME\E" is resolved again, to 127\.0\.0\.1/,
         'and the end of the outage is logged');

    # a second outage, NXDOMAIN this time: one more error line
    $mark = $t->log_mark;
    $t->dns_set($NAME => 'nxdomain');
    Time::HiRes::sleep(2.5);        # past valid=1s (whole seconds)
    my @more = ids_of(320, 2);
    is($t->post_json('/hook', hook($_))->{status}, 202, 'NXDOMAIN: queued') for @more;
    ok($t->wait_for(sub {
        log_lines($t, qr/bulk publish of .* failed .*retrying/, $mark) >= 2 }, 10),
       'NXDOMAIN: retried');
    @err = log_lines($t, qr/\[error\].*could not be resolved/, $mark);
    is(scalar @err, 1, 'NXDOMAIN: one error line for the new outage')
        or diag join "\n", @err;
    like($err[0] // '', qr/\(3: Host not found\)/, 'NXDOMAIN: "Host not found"');
    $t->dns_set($NAME => ['127.0.0.1']);
    ok($t->wait_published(40, @more), 'NXDOMAIN over: published');
    $t->promise_ok('after NXDOMAIN', @ids, @more);

    $t->done;
}

###########################################################################
# 4. a worker exits with a resolution in flight

for my $how ('fast stop', 'worker_shutdown_timeout') {
    my $t = DatoTest->new(workers => 1);
    $t->start_mock('--token', $TOKEN);
    my $port = $t->mock_port;
    my $dns_port = $t->start_dns('*' => 'drop');

    $t->run(main => $how eq 'fast stop' ? '' : 'worker_shutdown_timeout 1s;',
            http => <<"EOF");
    dato_api_token $TOKEN;
    resolver 127.0.0.1:$dns_port;
    resolver_timeout 30s;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /hook {
            dato_publish;
            dato_api_url http://$NAME:$port;
            dato_api_timeout 30s;
            dato_publish_wait none;
        }
    }
EOF

    my @ids = ids_of(400, 2);
    is($t->post_json('/hook', hook($_))->{status}, 202, "$how: queued") for @ids;
    ok($t->wait_for(sub { grep { $_->{name} eq $NAME } $t->dns_queries }, 5),
       "$how: the resolution is in flight");

    my $t0 = Time::HiRes::time();
    if ($how eq 'fast stop') {
        $t->stop_fast;
    } else {
        $t->stop;
    }
    my $dt = Time::HiRes::time() - $t0;
    cmp_ok($dt, '<', $t->{valgrind} ? 30 : 5, sprintf("$how: nginx exits in %.1f s", $dt));
    my %gave = %{ $t->gave_up_ids };
    is((scalar grep { $gave{$_} } @ids), 2, "$how: the records are given up, by name");
    unlike($t->error_log, qr/could not cancel/, "$how: the resolution is cancelled");

    $t->done;
}

done_testing;
