"""`appliance-admin`: a Textual console for the box's admin API (HTTP only, works over SSH).

Run ``appliance-admin [--url http://127.0.0.1:8080] [--key KEY | --key-file data/admin.key]``;
``d m s l u g`` switch between dashboard, models, seats, licence, updates and logs.
"""
