#!/usr/bin/perl

# Every record accounted for (issue 12, items 1-3): a record that DatoCMS
# refuses inside a batch is isolated by splitting the batch and given up
# alone, at error, by ID, with DatoCMS's status and code, while the rest of
# the batch is published; a refusal that would refuse any batch (401, 403,
# INSUFFICIENT_PERMISSIONS, INVALID_API_VERSION) is not split; job results
# with failed > 0 or a non-2xx status are handled like the same refusal of
# the call (split, the records that still fail given up with the job ID);
# a transient job failure is sent again; job results are hostile input
# (counts clamp, counters never wrap, a job ID too long or not made of ID
# characters is refused and logged, never cut and polled).
#
# Mock options used: POST /__mock/config "refuse_ids", "job_fail_ids",
# "job_fail_status", "job_fail_code"; faults {"job":{"status":500}},
# {"job":{"successful":-5,"failed":-1}}, {"job_id":"..."}.
#
# Every scenario runs in its own nginx and mock, so that the error log and
# the mock's records belong to it alone.  Assertions count calls and log
# lines; the time bounds only bound the waiting, and grow under valgrind.
# T17_ONLY=a,d runs only those scenarios (letters as in the comments).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use JSON::PP ();
use POSIX qw(ceil);
use DatoTest qw(ids_of hook ids_body post_req jobs_of);

# time bounds grow under valgrind
my $SLOW = $ENV{TEST_NGINX_USE_VALGRIND} ? 4 : 1;

my %ONLY = map { ($_ => 1) } split /[\s,]+/, $ENV{T17_ONLY} // '';
sub want { return !%ONLY || $ONLY{ $_[0] } }

###########################################################################
# helpers

# an nginx (one worker) with a mock, /status and the given locations
sub instance {
    my ($locations, @mock_args) = @_;
    my $t = DatoTest->with_mock(workers => 1, mock => [@mock_args],
                                server => <<"EOF");
$locations

        location /status {
            dato_publish_status;
        }
EOF
    return $t;
}

# /hook, answering at once, its jobs followed
my $POLLED = <<'EOF';
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
            dato_job_poll on;
        }
EOF

# parallel_requests() answers, with their bodies decoded as json_request()
# does
sub parallel_json {
    my ($t, $reqs, %o) = @_;
    my @res = $t->parallel_requests($reqs, %o);
    for my $r (@res) {
        $r->{json} = (defined $r->{body} && length $r->{body})
            ? eval { JSON::PP->new->utf8->decode($r->{body}) } : undef;
    }
    return @res;
}

# the most publish calls splitting a batch of $n may cost for one refused
# record: the first call, then two halves per level
sub split_bound { my ($n) = @_; return 1 + 2 * ceil(log($n) / log(2)) }

# the [error] lines that give records up
sub error_gave_up {
    my ($t) = @_;
    return grep { /\[error\].*gave up publishing/ } $t->gave_up_lines;
}

# the ids among @ids that the gave-up lines name
sub named {
    my ($t, @ids) = @_;
    my $g = $t->gave_up_ids;
    return grep { $g->{$_} } @ids;
}

sub status_json {
    my ($t) = @_;
    my $r = $t->json_request(method => 'GET', path => '/status');
    return wantarray ? ($r->{json} || {}, $r) : ($r->{json} || {});
}

# "name{labels}" => value of the Prometheus page
sub status_prom {
    my ($t) = @_;
    my $r = $t->request(method => 'GET', path => '/status?format=prometheus');
    my %s;
    for my $l (split /\n/, $r->{body} // '') {
        next if $l =~ /^#/ || $l eq '';
        my ($k, $v) = $l =~ /^(\S+) (\S+)$/ or next;
        $s{$k} = $v;
    }
    return \%s;
}

# wait until nothing is queued or followed any more
sub settled {
    my ($t, $timeout) = @_;
    return $t->wait_for(sub {
        my $s = status_json($t);
        return (defined $s->{records}{queued} && $s->{records}{queued} == 0
                && ($s->{jobs}{pending} // 0) == 0) ? 1 : 0;
    }, $timeout, 0.2);
}

# job id => the mock's job (ids, items, failed, successful, status, polls,
# seen)
sub jobs_by_id {
    my ($t) = @_;
    return { map { ($_->{id} => $_) } $t->mock_jobs };
}

# a mock job that succeeded (2xx, nothing failed) and whose result was
# served (polled past its "still running" answers)
sub job_succeeded {
    my ($j) = @_;
    return 0 unless $j;
    return 0 unless $j->{status} >= 200 && $j->{status} <= 299;
    return 0 unless ($j->{failed} // 0) == 0;
    return 0 if defined $j->{successful} && $j->{successful} != $j->{items};
    return $j->{polls} >= 0 && $j->{seen} > $j->{polls} ? 1 : 0;
}

# the ids among @ids that reached the mock in a call answered 202 whose job
# succeeded and was polled
sub published_ok {
    my ($t, @ids) = @_;
    my $jobs = jobs_by_id($t);
    my %ok;
    for my $c ($t->calls_for(@ids)) {
        next unless $c->{status} == 202 && defined $c->{job};
        next unless job_succeeded($jobs->{ $c->{job} });
        $ok{$_} = 1 for @{ $c->{ids} };
    }
    return grep { $ok{$_} } @ids;
}

sub calls_diag {
    my ($t, @ids) = @_;
    my %bad = map { $_ => 1 } @ids;
    my $jobs = jobs_by_id($t);
    return join "\n", map {
        my $j = defined $_->{job} ? $jobs->{ $_->{job} } : undef;
        sprintf('  %d %s ids=%d%s%s', $_->{status}, $_->{job} // '-',
                scalar(@{ $_->{ids} }),
                (grep { $bad{$_} } @{ $_->{ids} }) ? ' (has the bad id)' : '',
                $j ? " job: status $j->{status} failed $j->{failed} seen $j->{seen}" : '')
    } $t->publishes;
}

###########################################################################
# a. one record refused inside a batch of 20, dato_publish_wait job: the
#    other 19 published, each webhook answered by what became of its own
#    record

if (want('a')) {
    my $window = 200 * $SLOW;
    my $pt = 20 * $SLOW;
    my $t = instance(<<"EOF");
        location /hook {
            dato_publish;
            dato_publish_wait job;
            dato_batch_size 20;
            dato_batch_window ${window}ms;
            dato_publish_timeout ${pt}s;
        }
EOF
    my @ids = ids_of(1000, 20);
    my $bad = $ids[7];
    my @good = grep { $_ ne $bad } @ids;
    $t->mock_config({ refuse_ids => { $bad => {
        status => 422, code => 'UNPUBLISHED_LINK',
        details => { field => 'content', message => 'links to an unpublished record (t17-a)' } } } });

    my @res = parallel_json($t, [ map { post_req('/hook', hook($_)) } @ids ],
                         timeout => 30 * $SLOW);
    my %res = map { ($ids[$_] => $res[$_]) } 0 .. $#ids;
    my @calls = $t->publishes;

    ok(@calls && @{ $calls[0]{ids} } == 20,
       'refused in batch, wait job: the 20 records went out in one first call')
        or diag calls_diag($t, $bad);
    is($calls[0]{status}, 422, 'refused in batch, wait job: the mock refused it (422)')
        if @calls;

    is(scalar($t->published(@good)), 19, 'refused in batch, wait job: the other 19 published')
        or diag calls_diag($t, $bad);
    is(scalar($t->published($bad)), 0, 'refused in batch, wait job: the refused one never was');

    my %job_calls = map { ($_->{job} => $_) } grep { $_->{status} == 202 && defined $_->{job} } @calls;
    my @answered_ok = grep {
        my $r = $res{$_};
        my $id = $_;
        $r->{status} == 202
            && (($r->{json} || {})->{meta}{status} // '') eq 'accepted'
            && grep({ my $c = $job_calls{$_}; $c && grep { $_ eq $id } @{ $c->{ids} } } jobs_of($r))
    } @good;
    is(scalar(@answered_ok), 19,
       'refused in batch, wait job: 19 webhooks answered 202 with the job of a call carrying their record')
        or diag explain { map { ($_ => "$res{$_}{status} " . ($res{$_}{body} // $res{$_}{error} // '')) }
                          grep { my $x = $_; !grep { $_ eq $x } @answered_ok } @good };

    my $rb = $res{$bad};
    is($rb->{status}, 502, 'refused in batch, wait job: the refused record\'s webhook answered 502')
        or diag $rb->{body} // $rb->{error};
    is_deeply((($rb->{json} || {})->{meta} || {})->{refused}, [$bad],
              'refused in batch, wait job: its meta.refused names that record alone')
        or diag $rb->{body};
    like($rb->{body} // '', qr/UNPUBLISHED_LINK/, 'refused in batch, wait job: with DatoCMS\'s code');

    my @lines = error_gave_up($t);
    is(scalar(@lines), 1, 'refused in batch, wait job: exactly one [error] gave-up line')
        or diag join "\n", @lines;
    my $l = $lines[0] // '';
    like($l, qr/gave up publishing 1 record /, 'refused in batch, wait job: it gives up 1 record');
    like($l, qr/\Q$bad\E/, 'refused in batch, wait job: it names the refused record');
    like($l, qr/status 422/, 'refused in batch, wait job: with "status 422"');
    like($l, qr/code UNPUBLISHED_LINK/, 'refused in batch, wait job: with "code UNPUBLISHED_LINK"');
    like($l, qr/t17-a/, 'refused in batch, wait job: with DatoCMS\'s details');
    is_deeply([named($t, @ids)], [$bad], 'refused in batch, wait job: no other record given up');

    my $bound = split_bound(20);
    cmp_ok(scalar(@calls), '<=', $bound,
           "refused in batch, wait job: at most $bound publish calls")
        or diag calls_diag($t, $bad);

    my $s = status_json($t);
    is($s->{records}{given_up}, 1, 'refused in batch, wait job: records.given_up 1');

    $t->promise_ok('refused in batch, wait job', @ids);
    $t->done;
}

###########################################################################
# b. the same with dato_publish_wait none: all 20 answered 202 at once

if (want('b')) {
    my $window = 200 * $SLOW;
    my $t = instance(<<"EOF");
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 20;
            dato_batch_window ${window}ms;
        }
EOF
    my @ids = ids_of(2000, 20);
    my $bad = $ids[13];
    my @good = grep { $_ ne $bad } @ids;
    $t->mock_config({ refuse_ids => { $bad => { status => 422, code => 'UNPUBLISHED_LINK' } } });

    my @res = parallel_json($t, [ map { post_req('/hook', hook($_)) } @ids ],
                         timeout => 30 * $SLOW);
    my @queued = grep { $_->{status} == 202
                        && (($_->{json} || {})->{meta}{status} // '') eq 'queued' } @res;
    is(scalar(@queued), 20, 'refused in batch, wait none: all 20 webhooks answered 202 queued')
        or diag explain [ map { "$_->{status} " . ($_->{body} // $_->{error} // '') } @res ];

    ok($t->wait_for(sub { $t->published(@good) == 19 && named($t, $bad) }, 30 * $SLOW, 0.1),
       'refused in batch, wait none: 19 published and the refused one given up')
        or diag calls_diag($t, $bad);
    settled($t, 10 * $SLOW);
    my @calls = $t->publishes;
    ok(@calls && @{ $calls[0]{ids} } == 20, 'refused in batch, wait none: one first call of 20');
    is(scalar($t->published(@good)), 19, 'refused in batch, wait none: the other 19 published');
    is(scalar($t->published($bad)), 0, 'refused in batch, wait none: the refused one never was');

    my @lines = error_gave_up($t);
    is(scalar(@lines), 1, 'refused in batch, wait none: exactly one [error] gave-up line')
        or diag join "\n", @lines;
    my $l = $lines[0] // '';
    like($l, qr/gave up publishing 1 record .*status 422.*code UNPUBLISHED_LINK.*\Q$bad\E/,
         'refused in batch, wait none: "gave up publishing 1 record", status, code, the id');
    is_deeply([named($t, @ids)], [$bad], 'refused in batch, wait none: no other record given up');

    my $bound = split_bound(20);
    cmp_ok(scalar(@calls), '<=', $bound, "refused in batch, wait none: at most $bound publish calls")
        or diag calls_diag($t, $bad);

    $t->promise_ok('refused in batch, wait none', @ids);
    $t->done;
}

###########################################################################
# c. refusals that would refuse any batch: not split, one line

if (want('c')) {
    my $pt = 20 * $SLOW;
    my $t = instance(<<"EOF");
        location /hook {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
            dato_publish_timeout ${pt}s;
        }
EOF
    my $from = 3000;
    for my $case ([ 401, 'INVALID_AUTHORIZATION_HEADER' ],
                  [ 403, 'INSUFFICIENT_PERMISSIONS' ],
                  [ 422, 'INVALID_API_VERSION' ])
    {
        my ($st, $code) = @$case;
        my $name = "any batch, $st $code";
        my @ids = ids_of($from, 10);
        $from += 100;
        my $mark = $t->log_mark;
        # two faults: a split would take the second one too
        $t->mock_faults([ { status => $st, code => $code }, { status => $st, code => $code } ]);
        my $r = $t->post_json('/hook', ids_body(@ids), timeout => 30 * $SLOW);
        is($r->{status}, 502, "$name: the webhook answered 502") or diag $r->{body} // $r->{error};
        like($r->{body} // '', qr/\Q$code\E/, "$name: with DatoCMS's code");
        ok($t->wait_for_log(qr/\[error\].*gave up publishing/, 5 * $SLOW, $mark),
           "$name: given up");
        Time::HiRes::sleep(1.5);    # room for calls that should not come
        my @calls = $t->calls_for(@ids);
        is(scalar(@calls), 1, "$name: exactly 1 publish call, not split")
            or diag calls_diag($t);
        is(scalar(@calls) && scalar(@{ $calls[0]{ids} }), 10, "$name: it carried all 10 records");
        my @lines = grep { /\[error\].*gave up publishing/ }
                    split /\n/, $t->error_log_since($mark);
        is(scalar(@lines), 1, "$name: exactly one [error] gave-up line") or diag join "\n", @lines;
        like($lines[0] // '', qr/gave up publishing 10 records.*status $st.*code \Q$code\E/,
             "$name: \"gave up publishing 10 records\" with status and code");
        is(scalar(named($t, @ids)), 10, "$name: it names the 10 records");
        # the next test must not inherit the second fault
        $t->mock_reset;
    }
    $t->done;
}

###########################################################################
# d. a job result with failed > 0 (and one whose status is 422): the batch
#    is split and sent again; the records that still fail are given up with
#    the job ID

sub failed_job_case {
    my ($name, $from, %cfg) = @_;
    my $window = 200 * $SLOW;
    my $t = instance(<<"EOF");
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window ${window}ms;
            dato_job_poll on;
        }
EOF
    my @ids = ids_of($from, 10);
    my $bad = $ids[4];
    my @good = grep { $_ ne $bad } @ids;
    $t->mock_config({ job_fail_ids => [$bad], %cfg });

    my $r = $t->post_json('/hook', ids_body(@ids), timeout => 10 * $SLOW);
    is($r->{status}, 202, "$name: the webhook answered 202") or diag $r->{body} // $r->{error};

    ok($t->wait_for(sub { published_ok($t, @good) == 9 && named($t, $bad) }, 60 * $SLOW, 0.2),
       "$name: the 9 others published by jobs that succeeded, the bad one given up")
        or diag calls_diag($t, $bad);
    settled($t, 10 * $SLOW);

    my @calls = $t->publishes;
    my $jobs = jobs_by_id($t);
    ok(@calls && @{ $calls[0]{ids} } == 10, "$name: one first call of 10");
    my $j0 = @calls && defined $calls[0]{job} ? $jobs->{ $calls[0]{job} } : undef;
    ok($j0 && $j0->{seen} > 0 && ($j0->{failed} == 1 || $j0->{status} !~ /^2/),
       "$name: its job reported the failure and was polled") or diag explain $j0;
    is(scalar(published_ok($t, @good)), 9, "$name: 9 records in calls whose jobs succeeded");
    ok(!grep({ job_succeeded($jobs->{ $_->{job} // '' }) } $t->calls_for($bad)),
       "$name: no call carrying the bad record succeeded");

    my @lines = error_gave_up($t);
    is(scalar(@lines), 1, "$name: exactly one [error] gave-up line") or diag join "\n", @lines;
    my $l = $lines[0] // '';
    like($l, qr/gave up publishing 1 record /, "$name: \"gave up publishing 1 record\"");
    like($l, qr/\Q$bad\E/, "$name: naming the bad record");
    my %bad_jobs = map { ($_->{job} => 1) } grep { defined $_->{job} } $t->calls_for($bad);
    ok($l =~ /job "([^"]*)"/ && $bad_jobs{$1},
       "$name: with job \"<id>\" of a job that carried it") or diag $l;
    like($l, qr/\Q$cfg{job_fail_code}\E/, "$name: with the job's error code")
        if $cfg{job_fail_code};
    is_deeply([named($t, @ids)], [$bad], "$name: no other record given up");

    my $bound = split_bound(10);
    cmp_ok(scalar(@calls), '<=', $bound, "$name: at most $bound publish calls")
        or diag calls_diag($t, $bad);

    my $s = status_json($t);
    is($s->{records}{given_up}, 1, "$name: records.given_up 1");

    $t->promise_ok($name, @ids);
    $t->done;
}

if (want('d')) {
    failed_job_case('job failed 1', 4000);
    failed_job_case('job status 422', 4100, job_fail_status => 422, job_fail_code => 'ITEM_LOCKED');
}

###########################################################################
# e. a transient job failure (job status 500): the same batch sent again

if (want('e')) {
    my $t = instance($POLLED);
    my @ids = sort(ids_of(5000, 3));
    $t->mock_faults({ job => { status => 500 } });
    my $r = $t->post_json('/hook', ids_body(@ids), timeout => 10 * $SLOW);
    is($r->{status}, 202, 'transient job failure: the webhook answered 202');

    my $again = sub {
        my @c = $t->calls_for(@ids);
        my $jobs = jobs_by_id($t);
        return grep { $_->{status} == 202 && defined $_->{job}
                      && job_succeeded($jobs->{ $_->{job} }) } @c[1 .. $#c];
    };
    ok($t->wait_for(sub { scalar $again->() }, 60 * $SLOW, 0.2),
       'transient job failure: sent again, and that job succeeded') or diag calls_diag($t);
    settled($t, 10 * $SLOW);

    my @calls = $t->calls_for(@ids);
    my $jobs = jobs_by_id($t);
    cmp_ok(scalar(@calls), '>=', 2, 'transient job failure: a second publish call');
    my $j0 = @calls && defined $calls[0]{job} ? $jobs->{ $calls[0]{job} } : undef;
    ok($j0 && $j0->{status} == 500 && $j0->{seen} > 0,
       'transient job failure: the first job failed with 500 and was polled');
    is_deeply([ map { [ sort @{ $_->{ids} } ] } @calls ], [ map { [@ids] } @calls ],
              'transient job failure: every call carries the same 3 records (not split)');
    my @ok = $again->();
    ok(@ok && $ok[0]{status} == 202, 'transient job failure: answered 202, its job succeeded');
    is(scalar(error_gave_up($t)), 0, 'transient job failure: nothing given up')
        or diag join "\n", error_gave_up($t);
    $t->promise_ok('transient job failure', @ids);
    $t->done;
}

###########################################################################
# f. hostile counts: negative, or more than the call carried

if (want('f')) {
    my $t = instance($POLLED);
    my @prev = (0, 0);
    my $from = 6000;
    for my $case ([ 'negative counts', { successful => -5, failed => -1 } ],
                  [ 'counts above the records', { successful => 1000000, failed => 0 } ],
                  [ 'failed above the records', { successful => 0, failed => 1000000 } ])
    {
        my ($name, $job) = @$case;
        my @ids = ids_of($from, 3);
        $from += 100;
        $t->mock_faults({ job => $job });
        my $r = $t->post_json('/hook', ids_body(@ids), timeout => 10 * $SLOW);
        is($r->{status}, 202, "$name: the webhook answered 202");
        ok($t->wait_for(sub {
            my @c = $t->calls_for(@ids);
            my $jobs = jobs_by_id($t);
            @c && defined $c[0]{job} && ($jobs->{ $c[0]{job} }{seen} // 0) > 0;
        }, 10 * $SLOW, 0.1), "$name: its job result was served");
        ok(settled($t, 60 * $SLOW), "$name: the module settled (nothing queued or followed)");

        my ($s, $sr) = status_json($t);
        my $rec = $s->{records} || {};
        my $sent = $rec->{sent} // 0;
        my $desc = sprintf('published %s, failed %s, sent %s', $rec->{published} // 'undef',
                           $rec->{failed} // 'undef', $sent);
        for my $k (qw(published failed)) {
            my $v = $rec->{$k};
            ok(defined $v && $v =~ /^\d+\z/ && $v >= 0 && $v <= $sent,
               "$name: records.$k between 0 and records.sent ($desc)");
        }
        unlike($sr->{body} // '', qr/\d{16}/, "$name: no wrapped number on the status page")
            or diag $sr->{body};
        ok(($rec->{published} // 0) >= $prev[0] && ($rec->{failed} // 0) >= $prev[1],
           "$name: the counters did not go backwards ($desc)");
        @prev = ($rec->{published} // 0, $rec->{failed} // 0);
        for my $lj (@{ $s->{last_jobs} || [] }) {
            my $n = $lj->{records} // 0;
            my $bad = grep { defined $lj->{$_} && !($lj->{$_} >= 0 && $lj->{$_} <= $n) }
                      qw(successful failed);
            ok(!$bad, "$name: last_jobs \"$lj->{id}\": counts within 0..$n records")
                or diag explain $lj;
        }
        my $p = status_prom($t);
        for my $k (qw(dato_records_published_total dato_records_failed_total)) {
            my $v = $p->{$k};
            ok(defined $v && $v =~ /^\d+\z/ && $v <= $sent,
               "$name: $k between 0 and records.sent (" . ($v // 'undef') . ')');
        }
        $t->promise_ok($name, @ids);
    }
    $t->done;
}

###########################################################################
# g. a job ID that is too long (10,000 characters) or not made of ID
#    characters: refused and logged, never cut and polled

if (want('g')) {
    my $t = instance($POLLED);
    my $long = join '', map { $_ % 10 } 1 .. 10000;
    my $from = 7000;
    for my $case ([ '10 KB job ID', $long ], [ 'job ID with a space and slashes', '12 34/../x' ]) {
        my ($name, $jid) = @$case;
        my ($id) = ids_of($from, 1);
        $from += 100;
        my $mark = $t->log_mark;
        $t->mock_faults({ job_id => $jid });
        my $r = $t->post_json('/hook', hook($id), timeout => 10 * $SLOW);
        is($r->{status}, 202, "$name: the webhook answered 202");
        ok($t->wait_for(sub { scalar $t->calls_for($id) }, 5 * $SLOW), "$name: the call was made");
        ok($t->wait_for_log(qr/\[error\].*job ID/i, 10 * $SLOW, $mark),
           "$name: an [error] line says the job ID was refused")
            or diag join "\n", grep { /job/i && !/\[debug\]/ }
                                   split /\n/, $t->error_log_since($mark);
        Time::HiRes::sleep(3 * $SLOW);    # a first poll would come after 1 s
        my $head = substr($jid, 0, 8);
        my @polls = grep {
            my $p = $_->{path};
            $_->{method} eq 'GET'
                && ($p !~ m{^/job-results/\d{1,15}\z}
                    || index($p, $head) >= 0
                    || ($p =~ m{^/job-results/(.{8,})} && index($jid, $1) >= 0))
        } $t->mock_requests;
        is(scalar(@polls), 0, "$name: no GET made with any part of it")
            or diag join "\n", map { substr($_->{path}, 0, 80) } @polls[0 .. ($#polls > 4 ? 4 : $#polls)];
        $t->promise_ok($name, $id);
    }
    $t->done;
}

###########################################################################
# h. dato_publish_wait result, a job that failed 1 of 2: after the split
#    the good record is published, the bad one given up; 502 names it

if (want('h')) {
    my $pt = 20 * $SLOW;
    my $t = instance(<<"EOF");
        location /hook {
            dato_publish;
            dato_publish_wait result;
            dato_batch_window 100ms;
            dato_publish_timeout ${pt}s;
        }
EOF
    my ($good, $bad) = ids_of(8000, 2);
    $t->mock_config({ job_fail_ids => [$bad] });
    my $r = $t->post_json('/hook', ids_body($good, $bad), timeout => 30 * $SLOW);
    is($r->{status}, 502, 'wait result, failed 1 of 2: answered 502') or diag $r->{body} // $r->{error};
    is_deeply((($r->{json} || {})->{meta} || {})->{refused}, [$bad],
              'wait result, failed 1 of 2: meta.refused names the bad record only')
        or diag $r->{body};
    my @calls = $t->publishes;
    ok(@calls && @{ $calls[0]{ids} } == 2, 'wait result, failed 1 of 2: one first call of 2');
    ok($t->wait_for(sub { published_ok($t, $good) && named($t, $bad) }, 10 * $SLOW, 0.1),
       'wait result, failed 1 of 2: the good record published by a job that succeeded, the bad one given up')
        or diag calls_diag($t, $bad);
    is_deeply([named($t, $good, $bad)], [$bad], 'wait result, failed 1 of 2: only the bad one given up');
    my @lines = error_gave_up($t);
    is(scalar(@lines), 1, 'wait result, failed 1 of 2: exactly one [error] gave-up line')
        or diag join "\n", @lines;
    like($lines[0] // '', qr/gave up publishing 1 record .*job "/,
         'wait result, failed 1 of 2: "gave up publishing 1 record" with the job');
    $t->promise_ok('wait result, failed 1 of 2', $good, $bad);
    $t->done;
}

done_testing;
