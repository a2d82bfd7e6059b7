"""`make sandbox`: the service, a FHIR server holding demo patients, and the CDS Hooks sandbox's URLs.

`demo` builds the patients from fhir_examples/, `stack` starts and stops the servers (the browser test
starts the same ones), `__main__` prints the URLs and waits. Development use only: synthetic patients, and
the sandbox signs its tokens with a key anyone can read.
"""
