package DatoTest;

# Test harness for ngx_http_dato_module: the one module the tests use.
#
# It starts the packaged nginx (with the module loaded) and the mock
# DatoCMS API in a private temporary directory, talks HTTP/1.1 to both, and
# checks the error log.  Core Perl only.  The work is done by modules, one
# a job, whose headers list what each offers:
#
#   Dato::Nginx     the harness object: temp dir, ports, nginx.conf, nginx
#                   processes, error.log; api_conf()
#   Dato::Mock      the mock API: with_mock(), start_mock(), its control
#                   calls and records (publishes, calls_for, published ...)
#   Dato::DNS       a DNS server of the test's own (t/dns/dns.pl)
#   Dato::HTTP      the HTTP client (request, json_request, post_json,
#                   parallel_requests, raw_send ...)
#   Dato::Payload   IDs, webhooks and bodies (uuid_id, hook, ids_body ...)
#   Dato::Assert    assertions (log_ok, promise_ok, check_error, done ...)
#   Dato::Process   spawning and killing processes (which, free_port ...)
#
# A DatoTest object has the methods of all of them; the functions are
# DatoTest::NAME, or imported by name (use DatoTest qw(hook ids_body ...)).
#
#   use lib 't/lib'; use DatoTest qw(hook uuid_id);
#   my $t = DatoTest->with_mock(workers => 1, server => <<'EOF');
#       location /hook { dato_publish; }
#   EOF
#   like($t->post_json('/hook', hook(uuid_id(1)))->{raw}, qr/^HTTP\S+ 202/);
#   $t->done; done_testing;

use strict;
use warnings;

use Dato::Process ();
use Dato::Payload ();
use Dato::Nginx ();
use Dato::HTTP ();
use Dato::Mock ();
use Dato::DNS ();
use Dato::Assert ();
use Exporter 'import';

our @ISA = qw(Dato::Nginx Dato::Mock Dato::DNS Dato::HTTP Dato::Assert);

our $VERSION = '0.02';

# the functions of the job modules, under DatoTest:: and for import
our @EXPORT_OK;
for my $m (qw(Dato::Process Dato::Payload Dato::Nginx Dato::HTTP Dato::Mock
              Dato::Assert))
{
    no strict 'refs';
    for my $f (@{"${m}::EXPORT_OK"}) {
        *{"DatoTest::$f"} = \&{"${m}::$f"};
        push @EXPORT_OK, $f;
    }
}

1;
