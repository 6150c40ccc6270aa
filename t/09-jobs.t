#!/usr/bin/perl

# Following jobs to their end: GET /job-results/ID with a growing interval,
# the log lines of finished, failed and unfinished jobs, dato_job_poll off,
# dato_publish_wait result, polls under the rate limit, and the variables
# $dato_job_ids and $dato_records in an access log.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use POSIX ();
use DatoTest qw(ids_of hook ids_body max_in_window);

sub polls_of {
    my ($tt, @jobs) = @_;
    my %want = map { $_ => 1 } grep { defined } @jobs;
    my @r = sort { $a->{t} <=> $b->{t} } grep {
        $_->{method} eq 'GET' && $_->{path} =~ m{^/job-results/(.*)\z} && $want{$1}
    } $tt->mock_requests;
    return wantarray ? @r : scalar @r;
}

# "2024/05/14 09:12:03" -> epoch seconds (local time, as nginx logs)
sub log_time {
    my ($s) = @_;
    my ($y, $mo, $d, $h, $mi, $se) = $s =~ m{^(\d+)/(\d+)/(\d+) (\d+):(\d+):(\d+)}
        or return 0;
    return POSIX::mktime($se, $mi, $h, $d, $mo - 1, $y - 1900);
}

# queue a fault (if any), post the ids with "wait none", wait until the
# mock has the bulk call: returns (its job id, the webhook's answer)
sub publish_none {
    my ($tt, $path, $fault, @ids) = @_;
    $tt->mock_faults($fault) if $fault;
    my $r = $tt->post_json($path, ids_body(@ids));
    $tt->wait_for(sub { $tt->calls_for(@ids) }, 5, 0.05);
    my ($c) = $tt->calls_for(@ids);
    return (($c && $c->{status} == 202) ? $c->{job} : undef, $r, $c);
}

###########################################################################
# the rate-limit scenario runs in its own nginx and mock, alongside the rest

my $rl = DatoTest->with_mock(workers => 1, mock => ['--job-polls', '1'],
                             server => <<'EOF');
        location /rl {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 1;
            dato_batch_window 50ms;
            dato_rate_limit 2 2s;
        }
EOF

my @rl_ids = ids_of(9000, 2);
my $rl_t0 = Time::HiRes::time();
my $rl_r = $rl->post_json('/rl', ids_body(@rl_ids));

###########################################################################
# the main nginx

my $t = DatoTest->with_mock(workers => 1, mock => ['--job-polls', '0'],
                            api_http => q{log_format t '$status $dato_job_ids $dato_records';},
                            server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
        }

        location /short {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
            dato_job_timeout 3s;
        }

        location /nopoll {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
            dato_job_poll off;
        }

        location /result {
            dato_publish;
            dato_publish_wait result;
            dato_batch_window 100ms;
            access_log %%TMP%%/access.log t;
        }

        location /result2s {
            dato_publish;
            dato_publish_wait result;
            dato_batch_window 100ms;
            dato_publish_timeout 2s;
        }

        location /vars {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 200ms;
            dato_batch_size 2;
            access_log %%TMP%%/access.log t;
        }

        location /varsnone {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
            access_log %%TMP%%/access.log t;
        }
EOF

###########################################################################
# start the background scenarios: each publish in turn, so that the faults
# go to the right bulk call; their jobs are followed meanwhile

# A: a job that finishes after 2 polls
my ($idA) = ids_of(100, 1);
my ($jobA, $rA) = publish_none($t, '/hook', { job => { polls => 2 } }, $idA);
is($rA->{status}, 202, 'polls: webhook answered 202');
ok(defined $jobA, 'polls: the mock accepted the bulk call') or diag explain $rA;
$jobA //= 'none';

# D: a job that never finishes, dato_job_timeout 3s
my ($idD) = ids_of(400, 1);
my $markD = $t->log_mark;
my ($jobD, $rD, $callD) = publish_none($t, '/short', { job => { polls => -1 } }, $idD);
ok(defined $jobD, 'never: the mock accepted the bulk call');
$jobD //= 'none';
my $tD = $callD ? $callD->{t} : Time::HiRes::time();

# E: dato_job_poll off
my ($idE) = ids_of(500, 1);
my ($jobE, $rE, $callE) = publish_none($t, '/nopoll', undef, $idE);
ok(defined $jobE, 'poll off: the mock accepted the bulk call');
$jobE //= 'none';
my $tE = $callE ? $callE->{t} : Time::HiRes::time();

# B: a job with failed records
my @idsB = ids_of(200, 3);
my ($jobB) = publish_none($t, '/hook', { job => { failed => 2 } }, @idsB);
ok(defined $jobB, 'failed > 0: the mock accepted the bulk call');
$jobB //= 'none';

# C: a job whose status is 422
my ($idC) = ids_of(300, 1);
my ($jobC) = publish_none($t, '/hook', { job => { status => 422, code => 'INVALID_FIELD' } },
                          $idC);
ok(defined $jobC, 'status 422: the mock accepted the bulk call');
$jobC //= 'none';

###########################################################################
# dato_publish_wait result

{
    my ($id) = ids_of(600, 1);
    my $r = $t->post_json('/result', hook($id));
    my ($c) = $t->calls_for($id);
    my $job = $c ? $c->{job} : 'none';
    is($r->{status}, 200, 'result: 200 when the job finished') or diag $r->{raw};
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'result: JSON');
    is_deeply($r->{json},
              { data => [ { type => 'job_result', id => $job,
                            attributes => { status => 200, successful => 1, failed => 0 } } ],
                meta => { records => 1, status => 'published' } },
              'result: exact body with the job result') or diag $r->{body};
    ok($r->{elapsed} >= 0.9,
       sprintf('result: answered after the first poll (%.3f s)', $r->{elapsed}));
    my @p = polls_of($t, $job);
    ok(@p && $p[-1]{status} == 200, 'result: the mock answered the poll 200');
}

# a webhook that waits for the result is worth a poll a second: a job done
# after 4 "still running" answers is learned at about 5 s, within the
# default dato_publish_timeout of 7 s (doubling intervals would poll at 1,
# 3, 7 and 15 s)

{
    my ($id) = ids_of(650, 1);
    $t->mock_faults({ job => { polls => 4 } });
    my $r = $t->post_json('/result', hook($id), timeout => 15);
    my ($c) = $t->calls_for($id);
    my $job = $c ? $c->{job} : 'none';
    is($r->{status}, 200, 'result, 4 polls: 200 within dato_publish_timeout')
        or diag $r->{raw};
    is(($r->{json} || {})->{meta}{status}, 'published', 'result, 4 polls: published');
    my @p = polls_of($t, $job);
    is(scalar(@p), 5, 'result, 4 polls: five polls, the last answered 200');
    my @gaps = map { $p[$_]{t} - $p[$_ - 1]{t} } 1 .. $#p;
    ok(@gaps && !grep({ $_ > 1.6 } @gaps),
       'result, 4 polls: a poll a second (' . join(' ', map { sprintf '%.2f', $_ } @gaps) . ')');
}

# a job that failed one of two records: the batch is sent again in
# halves; the fault is gone, so both records end published, in two jobs
{
    my @ids = ids_of(700, 2);
    $t->mock_faults({ job => { failed => 1 } });
    my $r = $t->post_json('/result', ids_body(@ids), timeout => 15);
    my @calls = $t->calls_for(@ids);
    is($r->{status}, 200, 'result, failed > 0: 200 once the halves are published')
        or diag $r->{raw};
    is(scalar @calls, 3, 'result, failed > 0: the call, then one per half');
    my $j = $r->{json} || {};
    is_deeply([ sort map { $_->{id} } @{ $j->{data} || [] } ],
              [ sort map { $_->{job} } @calls[1, 2] ],
              'result, failed: the answer names the halves\' jobs') or diag $r->{body};
    is($j->{meta}{records}, 2, 'result, failed: meta.records 2');
}

{
    my ($id) = ids_of(800, 1);
    $t->mock_faults({ job => { polls => -1 } });
    my $r = $t->post_json('/result2s', hook($id));
    my ($c) = $t->calls_for($id);
    my $job = $c ? $c->{job} : 'none';
    is($r->{status}, 202, 'result, never finishes: 202') or diag $r->{raw};
    ok($r->{elapsed} >= 1.9 && $r->{elapsed} < 3.5,
       sprintf('result, never finishes: answered at dato_publish_timeout (%.3f s)',
               $r->{elapsed}));
    my $j = $r->{json} || {};
    is($j->{meta}{status}, 'queued', 'result, never finishes: meta.status queued')
        or diag $r->{body};
    is($j->{meta}{records}, 1, 'result, never finishes: meta.records 1');
    ok((grep { ($_->{id} // '') eq $job } @{ $j->{data} || [] }),
       'result, never finishes: the answer names the job') or diag $r->{body};
}

###########################################################################
# variables in the access log

my ($jobVars, @jobsVars);
{
    my @ids = ids_of(1000, 3);
    my $r = $t->post_json('/vars', ids_body(@ids));
    is($r->{status}, 202, 'vars: 2 batches answered 202') or diag $r->{raw};
    @jobsVars = map { $_->{job} } $t->calls_for(@ids);
    is(scalar @jobsVars, 2, 'vars: two bulk calls (dato_batch_size 2, 3 ids)');

    my ($id) = ids_of(1100, 1);
    $r = $t->post_json('/varsnone', hook($id));
    is($r->{status}, 202, 'vars: wait none answered 202');

    my $log = '';
    $t->wait_for(sub {
        $log = $t->read_file('access.log') // '';
        my @l = split /\n/, $log;
        return @l >= 5;
    }, 3);
    my @l = split /\n/, $log;
    # lines: /result 200 twice, /result 502 (above), then /vars, /varsnone
    # (/result2s logs nowhere)
    my @vars = grep { /^202 / } @l;
    my $want = join ',', @jobsVars;
    ok((grep { $_ eq "202 $want 3" } @vars),
       "vars: access log line \"202 $want 3\" (job ids comma separated)")
        or diag $log;
    ok((grep { $_ eq '202 - 1' } @vars),
       'vars: wait none: $dato_records is 1 ($dato_job_ids not known yet)')
        or diag $log;
    ok((grep { /^200 \d+ 1\z/ } @l), 'vars: result mode: "200 JOB 1"') or diag $log;
    ok((grep { /^200 \d+,\d+,\d+ 2\z/ } @l),
       'vars: result mode, split: "200 JOB,JOB,JOB 2"') or diag $log;
}

###########################################################################
# nginx -t: result needs the polls

{
    my ($rc, $out) = $t->test_conf(http => <<'EOF');
    dato_api_url %%MOCK%%;
    dato_api_token test-token;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /x { dato_publish; dato_publish_wait result; dato_job_poll off; }
    }
EOF
    isnt($rc, 0, 'nginx -t fails for "dato_publish_wait result; dato_job_poll off;"');
    like($out, qr/dato_publish_wait result.*dato_job_poll/,
         'nginx -t names both directives') or diag $out;
}

###########################################################################
# A: polling, 404 404 200

{
    ok($t->wait_for_log(qr/dato: job "\Q$jobA\E" finished/, 10),
       'polls: the job finished');
    my @p = polls_of($t, $jobA);
    is_deeply([ map { $_->{status} } @p ], [404, 404, 200],
              'polls: 3 GET /job-results/ID answered 404, 404, 200')
        or diag explain [ map { "$_->{t} $_->{status}" } @p ];
    for my $i (0 .. $#p) {
        my $h = $p[$i]{headers};
        is($p[$i]{path}, "/job-results/$jobA", "polls: #$i path");
        is($h->{authorization}, 'Bearer test-token', "polls: #$i Authorization");
        is($h->{accept}, 'application/json', "polls: #$i Accept");
        is($h->{'x-api-version'}, '3', "polls: #$i X-Api-Version 3");
    }
    my ($pub) = $t->calls_for($idA);
    if (@p == 3 && $pub) {
        my @iv = ($p[0]{t} - $pub->{t}, $p[1]{t} - $p[0]{t}, $p[2]{t} - $p[1]{t});
        my $iv = sprintf('%.3f %.3f %.3f', @iv);
        ok($iv[0] >= 0.9 && $iv[0] < 1.6, "polls: first poll after ~1 s ($iv)");
        ok($iv[1] >= 1.9 && $iv[1] < 2.8, "polls: second after ~2 s more ($iv)");
        ok($iv[2] > $iv[1], "polls: the interval keeps growing ($iv)");
    } else {
        fail('polls: intervals') for 1 .. 3;
    }
    $t->log_like(qr/\[info\].*dato: job "\Q$jobA\E" finished: status 200, 1 record, 1 successful, 0 failed, \d+\.\d{3} s/,
                 'polls: info line with the counts');
    $t->log_unlike(qr/\[warn\].*job "\Q$jobA\E"/, 'polls: no warning for that job');
    my $n = () = $t->error_log =~ /dato: job "\Q$jobA\E" finished/g;
    is($n, 1, 'polls: logged once');
}

###########################################################################
# B, C: a failed job is handled as a refusal of its call: B (2 of 3
# failed) is sent again in halves and published; C (one record, status
# 422) is given up at error, naming the record, the code and the job

{
    ok($t->wait_for_log(qr/job "\Q$jobB\E" failed 2 of 3 records/, 5),
       'failed > 0: the job failed');
    $t->log_like(qr/\[warn\].*dato: DatoCMS's job "\Q$jobB\E" failed 2 of 3 records \(status 200, code -\): sending its 3 records again in halves/,
                 'failed > 0: warn line: sent again in halves');
    ok($t->wait_published(10, @idsB), 'failed > 0: the 3 records published by the halves');
    my @c = $t->calls_for(@idsB);
    is(scalar @c, 3, 'failed > 0: the call, then one per half');

    ok($t->wait_for_log(qr/gave up publishing 1 record .*job "\Q$jobC\E"/, 5),
       'status 422: given up');
    $t->log_like(qr/\[error\].*dato: gave up publishing 1 record after 1 attempt \(DatoCMS's job "\Q$jobC\E" failed 1 of 1 record; status 422, code INVALID_FIELD.*job "\Q$jobC\E"\), records \(part 1 of 1\): \Q$idC\E/,
                 'status 422: error line with status, code, job and the record');
}

###########################################################################
# D: dato_job_timeout

{
    ok($t->wait_for_log(qr/job "\Q$jobD\E" of/, 6, $markD), 'never: logged');
    $t->log_like(qr/\[error\].*dato: job "\Q$jobD\E" of 1 record did not finish within dato_job_timeout.*records \(part 1 of 1\): \Q$idD\E/,
                 'never: error "did not finish within dato_job_timeout" naming the record');
    my @before = polls_of($t, $jobD);
    cmp_ok(scalar @before, '>=', 1, 'never: it was polled');

    # when: the log's own clock, to the second
    my $log = $t->error_log_since($markD);
    my ($sent) = $log =~ /^(\S+ \S+) \[info\].*records? sent, job "\Q$jobD\E"/m;
    my ($end) = $log =~ /^(\S+ \S+) \[error\].*job "\Q$jobD\E" of/m;
    my $waited = (defined $sent && defined $end) ? log_time($end) - log_time($sent) : -1;
    ok($waited >= 2 && $waited <= 4,
       "never: given up at about 3 s ($waited s by the log's clock)");

    # had it gone on, the next poll would come 4 s after the one at +3 s
    my $until = $tD + 8;
    Time::HiRes::sleep(0.1) while Time::HiRes::time() < $until;
    my @after = polls_of($t, $jobD);
    is(scalar @after, scalar @before, 'never: no GET after the warning')
        or diag explain [ map { sprintf '%.3f %s', $_->{t} - $tD, $_->{status} } @after ];
    ok(!(grep { $_->{t} > $tD + 3.5 } @after), 'never: no poll after the 3 s deadline')
        or diag explain [ map { sprintf '%.3f %s', $_->{t} - $tD, $_->{status} } @after ];
}

###########################################################################
# E: dato_job_poll off

{
    my $until = $tE + 2.5;
    Time::HiRes::sleep(0.1) while Time::HiRes::time() < $until;
    is(scalar(polls_of($t, $jobE)), 0, 'poll off: no GET /job-results for its job');
    $t->log_unlike(qr/job "\Q$jobE\E" (?:finished|of)/, 'poll off: no job line');
}

###########################################################################
# the rate limit holds polls too

{
    is($rl_r->{status}, 202, 'rate limit: webhook answered 202');
    ok($rl->wait_for(sub {
        my $n = () = $rl->error_log =~ /dato: job "\d+" finished/g;
        $n >= 2;
    }, 12), 'rate limit: both jobs finished');
    my @calls = sort { $a->{t} <=> $b->{t} } $rl->mock_requests;
    my @pub = grep { $_->{path} eq '/items/bulk/publish' } @calls;
    my @get = grep { $_->{path} =~ m{^/job-results/} } @calls;
    is(scalar @pub, 2, 'rate limit: 2 publishes');
    is(scalar @get, 4, 'rate limit: 4 polls (each job finishes on its 2nd)');
    is(scalar(grep { $_->{status} == 429 } @calls), 0, 'rate limit: no 429');
    my $max = max_in_window(2, @calls);
    cmp_ok($max, '<=', 2, 'rate limit: at most 2 calls (publish + poll) in any 2 s')
        or diag explain [ map { sprintf '%.3f %s %s', $_->{t} - $rl_t0, $_->{method},
                                $_->{path} } @calls ];
    if (@pub && @get) {
        my $d = $get[0]{t} - $pub[0]{t};
        ok($d >= 1.95, sprintf('rate limit: the first poll waited for the limit '
                               . '(%.3f s after the first publish)', $d));
    } else {
        fail('rate limit: the first poll waited for the limit');
    }
    $rl->done;
}

$t->done;
done_testing;
